//! Log Analytics column types and the names this project accepts for them.

use std::fmt;

/// A Log Analytics column type. `guid` is kept apart from `string` because Sentinel documents some
/// columns as GUIDs, but it is declared as `string` in DCR stream declarations (they have no guid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Int,
    Long,
    Real,
    Bool,
    DateTime,
    Guid,
    Dynamic,
}

impl ColumnType {
    /// Every spelling accepted in schema files, for error messages.
    pub const ACCEPTED: &'static str =
        "string, int, long, real, bool (or boolean), datetime, guid, dynamic";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "int" => Self::Int,
            "long" => Self::Long,
            "real" => Self::Real,
            "bool" | "boolean" => Self::Bool,
            "datetime" => Self::DateTime,
            "guid" => Self::Guid,
            "dynamic" => Self::Dynamic,
            _ => return None,
        })
    }

    /// The type name as Log Analytics tables spell it.
    pub fn table_type(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Long => "long",
            Self::Real => "real",
            Self::Bool => "bool",
            Self::DateTime => "datetime",
            Self::Guid => "guid",
            Self::Dynamic => "dynamic",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table_type())
    }
}

/// Names Log Analytics refuses for custom columns (Logs Ingestion API column rules).
pub const RESERVED_COLUMN_NAMES: &[&str] = &[
    "_ResourceId",
    "id",
    "_SubscriptionId",
    "TenantId",
    "Type",
    "UniqueId",
    "Title",
];

/// Checks a column name against the Log Analytics rules; returns what is wrong, if anything.
pub fn column_name_problem(name: &str) -> Option<String> {
    if let Some(reserved) = RESERVED_COLUMN_NAMES
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        return Some(format!(
            "column name {name:?} is reserved by Log Analytics ({reserved}); rename the column"
        ));
    }
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("column name is empty".into()),
        Some(c) if !c.is_ascii_alphabetic() => {
            return Some(format!(
                "column name {name:?} must start with a letter (Log Analytics rule)"
            ));
        }
        _ => {}
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Some(format!(
            "column name {name:?} contains {bad:?}; only letters, digits and '_' are allowed"
        ));
    }
    if name.len() > 45 {
        return Some(format!(
            "column name {name:?} is {} characters long; Log Analytics allows at most 45",
            name.len()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_name_rules() {
        assert!(column_name_problem("Site_Url").is_none());
        assert!(
            column_name_problem("TenantId")
                .unwrap()
                .contains("reserved")
        );
        assert!(column_name_problem("ID").unwrap().contains("reserved"));
        assert!(column_name_problem("_Private").unwrap().contains("letter"));
        assert!(column_name_problem("1abc").unwrap().contains("letter"));
        assert!(column_name_problem("a-b").unwrap().contains("'-'"));
        assert!(column_name_problem(&"a".repeat(45)).is_none());
        assert!(column_name_problem(&"a".repeat(46)).unwrap().contains("45"));
    }

    #[test]
    fn type_names() {
        assert_eq!(ColumnType::parse("boolean"), Some(ColumnType::Bool));
        assert_eq!(ColumnType::parse("text"), None);
        assert_eq!(ColumnType::Guid.table_type(), "guid");
    }
}
