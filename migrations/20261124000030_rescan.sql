-- The rescan loop (issue 8): one lease per ticket that is in a pending or
-- running rescan, or in an unfinished scan, so that no two RescanQueueJobs
-- (of any type, on any worker) ever queue the same ticket twice.
-- Runs on MariaDB 10.11 and MySQL 8.0.13+.
--
-- Life of a lease:
--   RescanQueueJob inserts it (INSERT IGNORE: the primary key decides who wins)
--     in the transaction that inserts the RescanJob row it names;
--   RescanJob records the scan's SourceKey on it in the transaction that inserts
--     the ScanSummary row, and deletes the leases of tickets it could not scan;
--   ScanSyncJob moves it to the ScanCloseJob row it queues (same transaction that
--     marks the summary finished), or deletes it when the scan ends in error,
--     is cancelled, or is abandoned after the scan timeout;
--   ScanCloseJob deletes it when it has decided every ticket.
-- A lease whose JobHistory row has ended (completed, error, cancelled) and whose
-- scan, if any, is no longer unfinished is stale: the next RescanQueueJob takes
-- it over (a RescanJob that died before launching, a lost ScanCloseJob).
CREATE TABLE RescanLease (
    OrganizationID VARCHAR(36) NOT NULL,
    TicketKey      VARCHAR(64) NOT NULL,       -- the JIRA key
    JobHistoryID   VARCHAR(36) NOT NULL,       -- the RescanJob, then the ScanCloseJob
    RescanType     VARCHAR(20) NOT NULL,       -- NORMAL, DECOMMISSIONED, PASSIVE, EXCEPTIONS
    ScanSourceKey  VARCHAR(100) NULL,          -- ScanSummary.SourceKey once the scan is launched
    LeasedAt       DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (OrganizationID, TicketKey),
    KEY ix_rescanlease_job (JobHistoryID),
    KEY ix_rescanlease_scan (OrganizationID, ScanSourceKey),
    CONSTRAINT fk_rescanlease_org FOREIGN KEY (OrganizationID) REFERENCES Organization (ID)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- ScanSyncJob finds a scan's summary by its key.
CREATE INDEX ix_scansummary_key ON ScanSummary (OrgID, SourceKey);
