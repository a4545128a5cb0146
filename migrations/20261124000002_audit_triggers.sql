-- Audit triggers: every change to JobConfig, SourceConfig, Organization, Ignore and Ticket,
-- whether made by Aegis or by an operator's SQL, leaves a row in the matching *Audit table.
-- EventType is INSERT/UPDATE/DELETE (CREATE for Ignore and Ticket, as the original).
-- SourceConfig's AuthInfo is hashed (SHA-256) so secrets never reach the audit.
-- Audit rows can be neither updated nor deleted.

CREATE TRIGGER trg_jobconfig_audit_insert AFTER INSERT ON JobConfig FOR EACH ROW
    INSERT INTO JobConfigAudit (ID, JobId, OrganizationID, DataInSourceConfigID, DataOutSourceConfigID, Payload, PriorityOverride, Continuous, WaitInSeconds, MaxInstances, AutoStart, CreatedDate, CreatedBy, UpdatedDate, UpdatedBy, Active, LastJobStart, EventType, EventDate)
    VALUES (NEW.ID, NEW.JobId, NEW.OrganizationID, NEW.DataInSourceConfigID, NEW.DataOutSourceConfigID, NEW.Payload, NEW.PriorityOverride, NEW.Continuous, NEW.WaitInSeconds, NEW.MaxInstances, NEW.AutoStart, NEW.CreatedDate, NEW.CreatedBy, NEW.UpdatedDate, NEW.UpdatedBy, NEW.Active, NEW.LastJobStart, 'INSERT', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_jobconfig_audit_update AFTER UPDATE ON JobConfig FOR EACH ROW
    INSERT INTO JobConfigAudit (ID, JobId, OrganizationID, DataInSourceConfigID, DataOutSourceConfigID, Payload, PriorityOverride, Continuous, WaitInSeconds, MaxInstances, AutoStart, CreatedDate, CreatedBy, UpdatedDate, UpdatedBy, Active, LastJobStart, EventType, EventDate)
    VALUES (NEW.ID, NEW.JobId, NEW.OrganizationID, NEW.DataInSourceConfigID, NEW.DataOutSourceConfigID, NEW.Payload, NEW.PriorityOverride, NEW.Continuous, NEW.WaitInSeconds, NEW.MaxInstances, NEW.AutoStart, NEW.CreatedDate, NEW.CreatedBy, NEW.UpdatedDate, NEW.UpdatedBy, NEW.Active, NEW.LastJobStart, 'UPDATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_jobconfig_audit_delete BEFORE DELETE ON JobConfig FOR EACH ROW
    INSERT INTO JobConfigAudit (ID, JobId, OrganizationID, DataInSourceConfigID, DataOutSourceConfigID, Payload, PriorityOverride, Continuous, WaitInSeconds, MaxInstances, AutoStart, CreatedDate, CreatedBy, UpdatedDate, UpdatedBy, Active, LastJobStart, EventType, EventDate)
    VALUES (OLD.ID, OLD.JobId, OLD.OrganizationID, OLD.DataInSourceConfigID, OLD.DataOutSourceConfigID, OLD.Payload, OLD.PriorityOverride, OLD.Continuous, OLD.WaitInSeconds, OLD.MaxInstances, OLD.AutoStart, OLD.CreatedDate, OLD.CreatedBy, OLD.UpdatedDate, OLD.UpdatedBy, OLD.Active, OLD.LastJobStart, 'DELETE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_jobconfigaudit_no_update BEFORE UPDATE ON JobConfigAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot update an auditing table';

CREATE TRIGGER trg_jobconfigaudit_no_delete BEFORE DELETE ON JobConfigAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot delete an auditing table';

CREATE TRIGGER trg_sourceconfig_audit_insert AFTER INSERT ON SourceConfig FOR EACH ROW
    INSERT INTO SourceConfigAudit (ID, Source, SourceID, OrganizationID, Address, Port, AuthInfoHash, DBCreatedDate, DBUpdatedDate, Payload, Active, UpdatedBy, EventType, EventDate)
    VALUES (NEW.ID, NEW.Source, NEW.SourceID, NEW.OrganizationID, NEW.Address, NEW.Port, SHA2(NEW.AuthInfo, 256), NEW.DBCreatedDate, NEW.DBUpdatedDate, NEW.Payload, NEW.Active, NEW.UpdatedBy, 'INSERT', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_sourceconfig_audit_update AFTER UPDATE ON SourceConfig FOR EACH ROW
    INSERT INTO SourceConfigAudit (ID, Source, SourceID, OrganizationID, Address, Port, AuthInfoHash, DBCreatedDate, DBUpdatedDate, Payload, Active, UpdatedBy, EventType, EventDate)
    VALUES (NEW.ID, NEW.Source, NEW.SourceID, NEW.OrganizationID, NEW.Address, NEW.Port, SHA2(NEW.AuthInfo, 256), NEW.DBCreatedDate, NEW.DBUpdatedDate, NEW.Payload, NEW.Active, NEW.UpdatedBy, 'UPDATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_sourceconfig_audit_delete BEFORE DELETE ON SourceConfig FOR EACH ROW
    INSERT INTO SourceConfigAudit (ID, Source, SourceID, OrganizationID, Address, Port, AuthInfoHash, DBCreatedDate, DBUpdatedDate, Payload, Active, UpdatedBy, EventType, EventDate)
    VALUES (OLD.ID, OLD.Source, OLD.SourceID, OLD.OrganizationID, OLD.Address, OLD.Port, SHA2(OLD.AuthInfo, 256), OLD.DBCreatedDate, OLD.DBUpdatedDate, OLD.Payload, OLD.Active, OLD.UpdatedBy, 'DELETE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_sourceconfigaudit_no_update BEFORE UPDATE ON SourceConfigAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot update an auditing table';

CREATE TRIGGER trg_sourceconfigaudit_no_delete BEFORE DELETE ON SourceConfigAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot delete an auditing table';

CREATE TRIGGER trg_organization_audit_insert AFTER INSERT ON Organization FOR EACH ROW
    INSERT INTO OrganizationAudit (ID, ParentOrgID, Code, Description, Payload, TimeZoneOffset, Created, Updated, CreatedBy, UpdatedBy, Active, EventType, EventDate)
    VALUES (NEW.ID, NEW.ParentOrgID, NEW.Code, NEW.Description, NEW.Payload, NEW.TimeZoneOffset, NEW.Created, NEW.Updated, NEW.CreatedBy, NEW.UpdatedBy, NEW.Active, 'INSERT', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_organization_audit_update AFTER UPDATE ON Organization FOR EACH ROW
    INSERT INTO OrganizationAudit (ID, ParentOrgID, Code, Description, Payload, TimeZoneOffset, Created, Updated, CreatedBy, UpdatedBy, Active, EventType, EventDate)
    VALUES (NEW.ID, NEW.ParentOrgID, NEW.Code, NEW.Description, NEW.Payload, NEW.TimeZoneOffset, NEW.Created, NEW.Updated, NEW.CreatedBy, NEW.UpdatedBy, NEW.Active, 'UPDATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_organization_audit_delete BEFORE DELETE ON Organization FOR EACH ROW
    INSERT INTO OrganizationAudit (ID, ParentOrgID, Code, Description, Payload, TimeZoneOffset, Created, Updated, CreatedBy, UpdatedBy, Active, EventType, EventDate)
    VALUES (OLD.ID, OLD.ParentOrgID, OLD.Code, OLD.Description, OLD.Payload, OLD.TimeZoneOffset, OLD.Created, OLD.Updated, OLD.CreatedBy, OLD.UpdatedBy, OLD.Active, 'DELETE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_organizationaudit_no_update BEFORE UPDATE ON OrganizationAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot update an auditing table';

CREATE TRIGGER trg_organizationaudit_no_delete BEFORE DELETE ON OrganizationAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot delete an auditing table';

CREATE TRIGGER trg_ignore_audit_insert AFTER INSERT ON `Ignore` FOR EACH ROW
    INSERT INTO IgnoreAudit (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, OSRegex, HostnameRegex, DeviceIDRegex, DueDate, Approval, Active, CreatedBy, UpdatedBy, Port, EventType, EventDate)
    VALUES (NEW.ID, NEW.SourceID, NEW.OrganizationID, NEW.TypeId, NEW.VulnerabilityId, NEW.DeviceID, NEW.OSRegex, NEW.HostnameRegex, NEW.DeviceIDRegex, NEW.DueDate, NEW.Approval, NEW.Active, NEW.CreatedBy, NEW.UpdatedBy, NEW.Port, 'CREATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ignore_audit_update AFTER UPDATE ON `Ignore` FOR EACH ROW
    INSERT INTO IgnoreAudit (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, OSRegex, HostnameRegex, DeviceIDRegex, DueDate, Approval, Active, CreatedBy, UpdatedBy, Port, EventType, EventDate)
    VALUES (NEW.ID, NEW.SourceID, NEW.OrganizationID, NEW.TypeId, NEW.VulnerabilityId, NEW.DeviceID, NEW.OSRegex, NEW.HostnameRegex, NEW.DeviceIDRegex, NEW.DueDate, NEW.Approval, NEW.Active, NEW.CreatedBy, NEW.UpdatedBy, NEW.Port, 'UPDATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ignore_audit_delete BEFORE DELETE ON `Ignore` FOR EACH ROW
    INSERT INTO IgnoreAudit (ID, SourceID, OrganizationID, TypeId, VulnerabilityId, DeviceID, OSRegex, HostnameRegex, DeviceIDRegex, DueDate, Approval, Active, CreatedBy, UpdatedBy, Port, EventType, EventDate)
    VALUES (OLD.ID, OLD.SourceID, OLD.OrganizationID, OLD.TypeId, OLD.VulnerabilityId, OLD.DeviceID, OLD.OSRegex, OLD.HostnameRegex, OLD.DeviceIDRegex, OLD.DueDate, OLD.Approval, OLD.Active, OLD.CreatedBy, OLD.UpdatedBy, OLD.Port, 'DELETE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ignoreaudit_no_update BEFORE UPDATE ON IgnoreAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot update an auditing table';

CREATE TRIGGER trg_ignoreaudit_no_delete BEFORE DELETE ON IgnoreAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot delete an auditing table';

CREATE TRIGGER trg_ticket_audit_insert AFTER INSERT ON Ticket FOR EACH ROW
    INSERT INTO TicketAudit (Title, Status, DetectionID, OrganizationID, AssignmentGroup, Assignee, UpdatedDate, ExceptionDate, ResolutionDate, DueDate, EventType, EventDate)
    VALUES (NEW.Title, NEW.Status, NEW.DetectionID, NEW.OrganizationID, NEW.AssignmentGroup, NEW.Assignee, NEW.UpdatedDate, NEW.ExceptionDate, NEW.ResolutionDate, NEW.DueDate, 'CREATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ticket_audit_update AFTER UPDATE ON Ticket FOR EACH ROW
    INSERT INTO TicketAudit (Title, Status, DetectionID, OrganizationID, AssignmentGroup, Assignee, UpdatedDate, ExceptionDate, ResolutionDate, DueDate, EventType, EventDate)
    VALUES (NEW.Title, NEW.Status, NEW.DetectionID, NEW.OrganizationID, NEW.AssignmentGroup, NEW.Assignee, NEW.UpdatedDate, NEW.ExceptionDate, NEW.ResolutionDate, NEW.DueDate, 'UPDATE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ticket_audit_delete BEFORE DELETE ON Ticket FOR EACH ROW
    INSERT INTO TicketAudit (Title, Status, DetectionID, OrganizationID, AssignmentGroup, Assignee, UpdatedDate, ExceptionDate, ResolutionDate, DueDate, EventType, EventDate)
    VALUES (OLD.Title, OLD.Status, OLD.DetectionID, OLD.OrganizationID, OLD.AssignmentGroup, OLD.Assignee, OLD.UpdatedDate, OLD.ExceptionDate, OLD.ResolutionDate, OLD.DueDate, 'DELETE', UTC_TIMESTAMP(3));

CREATE TRIGGER trg_ticketaudit_no_update BEFORE UPDATE ON TicketAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot update an auditing table';

CREATE TRIGGER trg_ticketaudit_no_delete BEFORE DELETE ON TicketAudit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Cannot delete an auditing table';
