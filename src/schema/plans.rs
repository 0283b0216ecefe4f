//! What each table plan allows, checked when the schemas load, so a plan the workspace would
//! refuse (or a column it would not keep) is reported by `check` before anything is deployed.
//! Sources: Learn, "Select a table plan" and "Manage data retention"
//! (azure-monitor/logs/data-platform-logs, data-retention-configure) and the tables REST API
//! (Microsoft.OperationalInsights/workspaces/tables, 2023-01-01-preview and later for
//! Auxiliary).

use super::{Column, ColumnType, Plan, TablePlan};

/// Interactive retention the Analytics plan takes (days); Basic and Auxiliary have 30, fixed.
pub const ANALYTICS_RETENTION: std::ops::RangeInclusive<u32> = 4..=730;
/// Basic and Auxiliary tables keep 30 days interactive, whatever is asked.
pub const FIXED_RETENTION: u32 = 30;
/// Longest total retention (interactive plus long-term): 12 years.
pub const MAX_TOTAL_RETENTION: u32 = 4383;

/// Every problem with `plan` for the table `output_table` with `columns`; empty when it is fine.
pub fn problems(output_table: &str, plan: &TablePlan, columns: &[Column]) -> Vec<String> {
    let mut found = Vec::new();
    match (plan.plan, plan.retention_days) {
        (Plan::Analytics, Some(days)) if !ANALYTICS_RETENTION.contains(&days) => {
            found.push(format!(
                "{output_table}: retention_days {days} is outside what the Analytics plan takes ({}..={} days)",
                ANALYTICS_RETENTION.start(),
                ANALYTICS_RETENTION.end()
            ));
        }
        (Plan::Basic | Plan::Auxiliary, Some(days)) if days != FIXED_RETENTION => {
            found.push(format!(
                "{output_table}: the {} plan keeps {FIXED_RETENTION} days interactive, fixed; remove retention_days {days} (set total_retention_days for longer)",
                plan.plan
            ));
        }
        _ => {}
    }
    if let Some(total) = plan.total_retention_days {
        let interactive = plan.retention_days.unwrap_or(match plan.plan {
            Plan::Analytics => *ANALYTICS_RETENTION.start(),
            Plan::Basic | Plan::Auxiliary => FIXED_RETENTION,
        });
        if total > MAX_TOTAL_RETENTION || total < interactive {
            found.push(format!(
                "{output_table}: total_retention_days {total} must be between the interactive retention ({interactive}) and {MAX_TOTAL_RETENTION} (12 years)"
            ));
        }
    }
    if plan.plan == Plan::Auxiliary {
        for c in columns {
            if let Some(why) = auxiliary_column_problem(c) {
                found.push(format!(
                    "{output_table}: column {} ({}): {why}",
                    c.name, c.ty
                ));
            }
        }
    }
    found
}

/// Why the Auxiliary plan can't hold `column` as declared, if it can't.
fn auxiliary_column_problem(column: &Column) -> Option<&'static str> {
    match column.ty {
        ColumnType::Guid => Some(
            "the Auxiliary plan has no guid columns; declare it as string in the table this one is like",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            from: vec![name.into()],
            reads_envelope: false,
            enum_table: None,
            required: false,
        }
    }

    #[test]
    fn each_plan_takes_its_own_retention() {
        let plan = |plan, retention_days, total_retention_days| TablePlan {
            plan,
            retention_days,
            total_retention_days,
        };
        let cols = [column("TimeGenerated", ColumnType::DateTime)];
        assert!(problems("T_CL", &plan(Plan::Analytics, Some(90), Some(730)), &cols).is_empty());
        assert!(problems("T_CL", &plan(Plan::Basic, None, Some(365)), &cols).is_empty());
        assert!(problems("T_CL", &plan(Plan::Auxiliary, Some(30), Some(4383)), &cols).is_empty());
        let analytics = problems("T_CL", &plan(Plan::Analytics, Some(1000), None), &cols);
        assert!(analytics[0].contains("4..=730"), "{analytics:?}");
        let basic = problems("T_CL", &plan(Plan::Basic, Some(90), None), &cols);
        assert!(basic[0].contains("30 days interactive"), "{basic:?}");
        let total = problems("T_CL", &plan(Plan::Auxiliary, None, Some(5000)), &cols);
        assert!(total[0].contains("12 years"), "{total:?}");
        let shorter = problems("T_CL", &plan(Plan::Analytics, Some(90), Some(60)), &cols);
        assert!(
            shorter[0].contains("interactive retention (90)"),
            "{shorter:?}"
        );
    }

    #[test]
    fn auxiliary_refuses_columns_it_cannot_hold() {
        let plan = TablePlan {
            plan: Plan::Auxiliary,
            ..TablePlan::default()
        };
        let cols = [
            column("TimeGenerated", ColumnType::DateTime),
            column("MessageId", ColumnType::Guid),
        ];
        let found = problems("T_CL", &plan, &cols);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("column MessageId (guid)"), "{found:?}");
        let analytics = TablePlan::default();
        assert!(problems("T_CL", &analytics, &cols).is_empty());
    }
}
