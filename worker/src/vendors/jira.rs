//! JIRA REST API v2 client.
