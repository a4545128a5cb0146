//! The scanner trait the sync and rescan jobs use (Qualys and Nexpose implement it).
