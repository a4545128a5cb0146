-- Ticketing (issue 7): exactly one open ticket per finding, the IP → assignment
-- group fallback table of the original, and BulkUpdateJob's per-row report.
-- Runs on MariaDB 10.11 and MySQL 8.0.13+.

-- One row per finding (organization, scanner asset, scanner vulnerability id,
-- port, protocol) that Aegis has ticketed or is ticketing. The primary key is
-- the guarantee: a worker must insert or take over this row before it may
-- create a JIRA issue for the finding, and the JIRA issue carries the label
-- `aegis-<FindingKey>` so that an issue created by a worker that died before
-- writing `Title` is found and adopted instead of duplicated.
--   Title NULL, JobHistoryID set: being ticketed by that job run (its lease
--     and Attempt say whether the holder is alive);
--   Title set: the finding's current ticket; a new one is opened only after
--     that ticket reaches a closed status.
CREATE TABLE TicketClaim (
    OrganizationID VARCHAR(36) NOT NULL,
    FindingKey     CHAR(32) NOT NULL,          -- hex, first 128 bits of SHA-256 of the finding
    DetectionID    VARCHAR(36) NOT NULL,
    Title          VARCHAR(36) NULL,           -- the JIRA key once created or adopted
    PreviousTitle  VARCHAR(36) NULL,           -- the closed ticket this claim replaced
    JobHistoryID   VARCHAR(36) NULL,           -- the run holding the claim while Title is NULL
    Attempt        INT NOT NULL DEFAULT 0,
    ClaimedAt      DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    Updated        DATETIME(3) NULL,
    PRIMARY KEY (OrganizationID, FindingKey),
    KEY ix_ticketclaim_title (OrganizationID, Title),
    KEY ix_ticketclaim_detection (DetectionID),
    CONSTRAINT fk_ticketclaim_org FOREIGN KEY (OrganizationID) REFERENCES Organization (ID)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The original's IP → assignment group fallback (GetAssignmentGroupByIP).
CREATE TABLE AssignmentGroup (
    SourceID       VARCHAR(36) NOT NULL,
    OrganizationID VARCHAR(36) NOT NULL,
    IpAddress      VARCHAR(64) NOT NULL,
    GroupName      VARCHAR(200) NOT NULL,
    DBCreatedDate  DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    DBUpdatedDate  DATETIME(3) NULL,
    PRIMARY KEY (SourceID, OrganizationID, IpAddress),
    CONSTRAINT fk_assignmentgroup_source FOREIGN KEY (SourceID) REFERENCES Source (ID),
    CONSTRAINT fk_assignmentgroup_org FOREIGN KEY (OrganizationID) REFERENCES Organization (ID)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- BulkUpdateJob's report: one row per CSV data row.
CREATE TABLE BulkUpdateResult (
    JobHistoryID VARCHAR(36) NOT NULL,
    RowNumber    INT NOT NULL,             -- 1-based line number in the combined CSV
    TicketKey    VARCHAR(36) NULL,
    Command      VARCHAR(20) NOT NULL,
    Success      TINYINT(1) NOT NULL,
    Message      TEXT NULL,
    `Line`       TEXT NULL,
    Created      DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (JobHistoryID, RowNumber)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
