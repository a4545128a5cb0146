//! Nexpose / InsightVM API v3 (JSON) client.
