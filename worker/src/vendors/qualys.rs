//! Qualys VM API v2 (XML) client.
