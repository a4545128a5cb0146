//! The ticket-engine trait the ticketing and rescan jobs use (JIRA implements it).
