//! The Aegis JIRA workflow: statuses, which transitions each status offers, their screens, and
//! the same workflow as a JIRA "Export as XML" document (so an installer can derive
//! `transition_map` from exactly the ids the simulator serves).
//!
//! Every target status has one *common action* whose id is the transition id JIRA returns from
//! `GET /issue/{key}/transitions`; a step offers the common actions listed by [`targets_from`].

/// Status category, as in JIRA's `statusCategory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    New,
    InProgress,
    Done,
}

impl Category {
    /// (id, key, colorName, name) as JIRA reports them.
    pub fn parts(self) -> (u32, &'static str, &'static str, &'static str) {
        match self {
            Category::New => (2, "new", "blue-gray", "To Do"),
            Category::InProgress => (4, "indeterminate", "yellow", "In Progress"),
            Category::Done => (3, "done", "green", "Done"),
        }
    }
}

/// A workflow status: (status id, name, category).
pub struct StatusDef {
    pub id: u32,
    pub name: &'static str,
    pub category: Category,
    /// Common-action id of the transition *into* this status.
    pub transition_id: u32,
    pub transition_name: &'static str,
    pub screen: &'static [ScreenField],
    pub resolution: Option<&'static str>,
}

/// Fields on a transition screen (by display name of the field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScreenField {
    Assignee,
    /// A custom field by display name; `true` = required.
    Custom(&'static str, bool),
}

const RES_DATE: ScreenField = ScreenField::Custom("Resolution Date", false);
const EXC_EXP: ScreenField = ScreenField::Custom("Exception Expiration", false);

pub const STATUSES: &[StatusDef] = &[
    StatusDef {
        id: 1,
        name: "Open",
        category: Category::New,
        transition_id: 11,
        transition_name: "Open",
        screen: &[ScreenField::Assignee],
        resolution: None,
    },
    StatusDef {
        id: 3,
        name: "In-Progress",
        category: Category::InProgress,
        transition_id: 21,
        transition_name: "Start Progress",
        screen: &[ScreenField::Assignee],
        resolution: None,
    },
    StatusDef {
        id: 4,
        name: "Reopened",
        category: Category::New,
        transition_id: 31,
        transition_name: "Reopen",
        screen: &[
            ScreenField::Assignee,
            ScreenField::Custom("Reopen Reason", true),
        ],
        resolution: None,
    },
    StatusDef {
        id: 10001,
        name: "Resolved-Remediated",
        category: Category::InProgress,
        transition_id: 41,
        transition_name: "Resolve Remediated",
        screen: &[RES_DATE],
        resolution: Some("Remediated"),
    },
    StatusDef {
        id: 10002,
        name: "Resolved-FalsePositive",
        category: Category::InProgress,
        transition_id: 51,
        transition_name: "Resolve False Positive",
        screen: &[RES_DATE],
        resolution: Some("False Positive"),
    },
    StatusDef {
        id: 10003,
        name: "Resolved-Decommissioned",
        category: Category::InProgress,
        transition_id: 61,
        transition_name: "Resolve Decommissioned",
        screen: &[RES_DATE],
        resolution: Some("Decommissioned"),
    },
    StatusDef {
        id: 10004,
        name: "Resolved-Exception",
        category: Category::InProgress,
        transition_id: 71,
        transition_name: "Resolve Exception",
        screen: &[RES_DATE, EXC_EXP],
        resolution: Some("Exception"),
    },
    StatusDef {
        id: 10005,
        name: "Closed-Remediated",
        category: Category::Done,
        transition_id: 81,
        transition_name: "Close Remediated",
        screen: &[RES_DATE],
        resolution: Some("Remediated"),
    },
    StatusDef {
        id: 10006,
        name: "Closed-False-Positive",
        category: Category::Done,
        transition_id: 91,
        transition_name: "Close False Positive",
        screen: &[RES_DATE],
        resolution: Some("False Positive"),
    },
    StatusDef {
        id: 10007,
        name: "Closed-FalsePositive",
        category: Category::Done,
        transition_id: 151,
        transition_name: "Close FalsePositive",
        screen: &[RES_DATE],
        resolution: Some("False Positive"),
    },
    StatusDef {
        id: 10008,
        name: "Closed-Decommission",
        category: Category::Done,
        transition_id: 101,
        transition_name: "Close Decommission",
        screen: &[RES_DATE],
        resolution: Some("Decommissioned"),
    },
    StatusDef {
        id: 10009,
        name: "Closed-Exception",
        category: Category::Done,
        transition_id: 111,
        transition_name: "Approve Exception",
        screen: &[RES_DATE, EXC_EXP],
        resolution: Some("Exception"),
    },
    StatusDef {
        id: 10010,
        name: "Closed-CERF",
        category: Category::Done,
        transition_id: 121,
        transition_name: "Close CERF",
        screen: &[RES_DATE],
        resolution: Some("Exception"),
    },
    StatusDef {
        id: 10011,
        name: "Closed-Error",
        category: Category::Done,
        transition_id: 131,
        transition_name: "Close Error",
        screen: &[RES_DATE],
        resolution: Some("Won't Do"),
    },
    StatusDef {
        id: 10012,
        name: "Scan-Error",
        category: Category::InProgress,
        transition_id: 141,
        transition_name: "Scan Error",
        screen: &[],
        resolution: None,
    },
];

/// Resolutions: (id, name, description).
pub const RESOLUTIONS: &[(u32, &str, &str)] = &[
    (10000, "Done", "Work has been completed on this issue."),
    (10001, "Remediated", "The vulnerability was remediated."),
    (10002, "False Positive", "The finding was a false positive."),
    (10003, "Decommissioned", "The asset was decommissioned."),
    (10004, "Exception", "A risk exception was approved."),
    (10005, "Won't Do", "This issue won't be actioned."),
    (
        10006,
        "Duplicate",
        "The problem is a duplicate of an existing issue.",
    ),
];

const OPEN_SET: &[&str] = &["Open", "In-Progress", "Reopened", "Scan-Error"];
const RESOLVED_SET: &[&str] = &[
    "Resolved-Remediated",
    "Resolved-FalsePositive",
    "Resolved-Decommissioned",
    "Resolved-Exception",
];
const CLOSED_SET: &[&str] = &[
    "Closed-Remediated",
    "Closed-False-Positive",
    "Closed-FalsePositive",
    "Closed-Decommission",
    "Closed-CERF",
    "Closed-Error",
];

pub fn status(name: &str) -> Option<&'static StatusDef> {
    STATUSES.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

pub fn status_by_id(id: &str) -> Option<&'static StatusDef> {
    STATUSES.iter().find(|s| s.id.to_string() == id)
}

pub fn initial_status() -> &'static StatusDef {
    &STATUSES[0]
}

/// Statuses reachable in one transition from `from`, in workflow order.
pub fn targets_from(from: &str) -> Vec<&'static StatusDef> {
    let allowed: Vec<&str> = if OPEN_SET.contains(&from) {
        OPEN_SET
            .iter()
            .chain(RESOLVED_SET)
            .chain(CLOSED_SET)
            .chain(["Closed-Exception"].iter())
            .copied()
            .collect()
    } else if RESOLVED_SET.contains(&from) {
        ["Reopened", "In-Progress", "Scan-Error"]
            .iter()
            .chain(RESOLVED_SET)
            .chain(CLOSED_SET)
            .chain(["Closed-Exception"].iter())
            .copied()
            .collect()
    } else if from == "Closed-Exception" {
        vec![
            "Closed-Remediated",
            "Closed-Decommission",
            "Reopened",
            "Scan-Error",
            "Resolved-Exception",
        ]
    } else {
        vec!["Reopened"]
    };
    STATUSES
        .iter()
        .filter(|s| s.name != from && allowed.contains(&s.name))
        .collect()
}

/// The transition with `id` offered from status `from`, if any.
pub fn transition(from: &str, id: &str) -> Option<&'static StatusDef> {
    targets_from(from)
        .into_iter()
        .find(|s| s.transition_id.to_string() == id.trim())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The workflow in JIRA's "Export as XML" (OSWorkflow) format.
pub fn workflow_xml() -> String {
    let step_id = |name: &str| {
        STATUSES
            .iter()
            .position(|s| s.name == name)
            .map(|p| p + 1)
            .unwrap_or(1)
    };
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE workflow PUBLIC \"-//OpenSymphony Group//DTD OSWorkflow 2.8//EN\" \"http://www.opensymphony.com/osworkflow/workflow_2_8.dtd\">\n<workflow>\n  <meta name=\"jira.description\">Aegis vulnerability workflow (aegis-sim)</meta>\n  <initial-actions>\n    <action id=\"1\" name=\"Create\">\n      <results>\n        <unconditional-result old-status=\"null\" status=\"open\" step=\"1\"/>\n      </results>\n    </action>\n  </initial-actions>\n  <common-actions>\n",
    );
    for s in STATUSES {
        out.push_str(&format!(
            "    <action id=\"{}\" name=\"{}\" view=\"fieldscreen\">\n      <results>\n        <unconditional-result old-status=\"null\" status=\"null\" step=\"{}\"/>\n      </results>\n    </action>\n",
            s.transition_id,
            xml_escape(s.transition_name),
            step_id(s.name)
        ));
    }
    out.push_str("  </common-actions>\n  <steps>\n");
    for (i, s) in STATUSES.iter().enumerate() {
        out.push_str(&format!(
            "    <step id=\"{}\" name=\"{}\">\n      <meta name=\"jira.status.id\">{}</meta>\n      <actions>\n",
            i + 1,
            xml_escape(s.name),
            s.id
        ));
        for t in targets_from(s.name) {
            out.push_str(&format!(
                "        <common-action id=\"{}\"/>\n",
                t.transition_id
            ));
        }
        out.push_str("      </actions>\n    </step>\n");
    }
    out.push_str("  </steps>\n</workflow>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_can_be_left_and_reached() {
        for s in STATUSES {
            assert!(!targets_from(s.name).is_empty(), "{} is a dead end", s.name);
            if s.name != "Open" {
                assert!(
                    STATUSES
                        .iter()
                        .any(|f| targets_from(f.name).iter().any(|t| t.name == s.name)),
                    "{} unreachable",
                    s.name
                );
            }
        }
    }

    #[test]
    fn transition_ids_are_unique() {
        let mut ids: Vec<u32> = STATUSES.iter().map(|s| s.transition_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), STATUSES.len());
    }
}
