-- Seed rows, as the original installer's scaffold writes them
-- (spec/original-jobrunner-schema.md §5, §6, §9), plus DiagnosticJob.

INSERT INTO JobStatus (Id, Status) VALUES
    (-1, 'CANCEL'), (0, 'UNKNOWN'), (1, 'PENDING'), (2, 'IN PROGRESS'),
    (3, 'COMPLETED'), (4, 'ERROR'), (5, 'CANCELED');

INSERT INTO LogType (Id, Type, Name) VALUES
    (0, 'INFO', 'Information'), (1, 'WARN', 'Warning'), (2, 'ERR', 'Error'),
    (3, 'CRIT', 'Critical'), (4, 'FATL', 'Fatal');

INSERT INTO SourceType (Id, Type, CreatedBy) VALUES
    (1, 'Scanner', 'Scaffold'), (2, 'TicketEngine', 'Scaffold'), (3, 'Cloud', 'Scaffold'),
    (4, 'CISBench', 'Scaffold'), (5, 'ImageScanner', 'Scaffold');

INSERT INTO Source (ID, SourceTypeId, Source, CreatedBy) VALUES
    (UUID(), 1, 'Nexpose', 'Scaffold'),
    (UUID(), 1, 'Qualys', 'Scaffold'),
    (UUID(), 2, 'JIRA', 'Scaffold'),
    (UUID(), 2, 'ServiceNow', 'Scaffold'),
    (UUID(), 3, 'AWS', 'Scaffold'),
    (UUID(), 3, 'Azure', 'Scaffold'),
    (UUID(), 4, 'Dome9', 'Scaffold'),
    (UUID(), 4, 'CloudView', 'Scaffold'),
    (UUID(), 5, 'Aqua', 'Scaffold');

INSERT INTO Job (Id, Struct, Priority, SourceTypeIn, SourceTypeOut, CreatedBy) VALUES
    (1, 'RescanQueueJob', 5, NULL, NULL, 'Scaffold'),
    (2, 'RescanJob', 4, NULL, NULL, 'Scaffold'),
    (3, 'ExceptionJob', 5, NULL, NULL, 'Scaffold'),
    (4, 'TicketingJob', 4, NULL, NULL, 'Scaffold'),
    (5, 'ScanSyncJob', 5, NULL, NULL, 'Scaffold'),
    (6, 'ScanCloseJob', 5, NULL, NULL, 'Scaffold'),
    (7, 'BulkUpdateJob', 5, NULL, NULL, 'Scaffold'),
    (8, 'VulnSyncJob', 4, NULL, NULL, 'Scaffold'),
    (9, 'CloudSyncJob', 5, NULL, NULL, 'Scaffold'),
    (10, 'AssetSyncJob', 4, NULL, NULL, 'Scaffold'),
    (11, 'CISRescanJob', 5, NULL, NULL, 'Scaffold'),
    (12, 'TicketSyncJob', 5, NULL, NULL, 'Scaffold'),
    (13, 'CloudDecommissionJob', 4, 3, 2, 'Scaffold'),
    (14, 'ImageRescanJob', 4, 5, 2, 'Scaffold'),
    (15, 'DiagnosticJob', 5, NULL, NULL, 'Scaffold');

INSERT INTO DetectionStatus (Id, Status, Name, CreatedBy) VALUES
    (1, 'new', 'New', 'Scaffold'),
    (2, 'active', 'Active', 'Scaffold'),
    (3, 'reopened', 'Re-Opened', 'Scaffold'),
    (4, 'fixed', 'Fixed', 'Scaffold'),
    (5, 'vulnerable', 'Vulnerable', 'Scaffold'),
    (6, 'exceptioned', 'Exceptioned', 'Scaffold'),
    (7, 'dead host', 'Dead Host', 'Scaffold'),
    (8, 'potential', 'Potential', 'Scaffold'),
    (9, 'informational', 'Informational', 'Scaffold');

INSERT INTO IgnoreType (ID, Type, Name, CreatedBy) VALUES
    (0, 'EXCEPTION', 'Exception', 'Scaffold'),
    (1, 'FALSEPOSITIVE', 'False Positive', 'Scaffold'),
    (2, 'DECOMMASSET', 'Decommissioned Asset', 'Scaffold');

INSERT INTO ReferenceType (Id, Type) VALUES (0, 'cve'), (1, 'ms'), (2, 'vendor');

-- Substring rules; the row with the highest Priority whose Match occurs in the OS wins.
-- The empty Match matches everything and is the fallback ('Unknown').
INSERT INTO OperatingSystemType (Type, `Match`, Priority) VALUES
    ('Ubuntu', 'ubuntu', 3),
    ('AIX', 'aix', 5),
    ('Solaris', 'solaris', 5),
    ('Amazon Linux', 'amazon linux', 6),
    ('Redhat', 'red hat', 5),
    ('Redhat', 'redhat', 5),
    ('CentOS', 'centos', 5),
    ('IOS', 'cisco ios', 6),
    ('Cisco', 'cisco', 5),
    ('CoreOS', 'coreos', 5),
    ('Linux', 'fabric os', 5),
    ('NetApp', 'netapp', 5),
    ('Oracle', 'oracle', 5),
    ('UNIX', 'sunos', 1),
    ('Linux', 'linux', 1),
    ('Windows', 'windows', 1),
    ('VMware ESX/ESXi', 'vmware', 5),
    ('BIG-IP', 'big-ip', 5),
    ('Data ONTAP', 'data ontap', 5),
    ('z/OS', 'z/opsys', 5),
    ('BIP-IP', 'f5', 5),
    ('MAC OS X', 'os x', 1),
    ('MAC OS X', 'opsys x', 1),
    ('embedded', 'embedded', 5),
    ('embedded', 'vxworks', 5),
    ('Unknown', '', 0);
