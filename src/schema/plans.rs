//! What each table plan allows, checked when the schemas load, so a plan the workspace would
//! refuse is reported by `check` before anything is deployed. Sources: the tables REST API
//! (retentionInDays 4-730 on Analytics tables, read-only on Basic and Auxiliary ones;
//! totalRetentionInDays 4-4383), and MicrosoftDocs/azure-monitor-docs
//! create-custom-table-auxiliary.md: a DCR that sends to an Auxiliary table "can only send data
//! to a single table" and "can't include a transformation", and Auxiliary tables "don't
//! support columns with dynamic data" (its sample's column types: string, int, long, real,
//! boolean, datetime). So only routed tables may be Auxiliary, with their dynamic and guid
//! columns as strings ([`as_auxiliary`]), each with a DCR of its own (`schema dcr`), and `check`
//! wants the sink to post them there.

use super::{Column, ColumnType, Plan, TablePlan};

/// Interactive retention the Analytics plan takes (days); Basic and Auxiliary keep 30, fixed.
pub const ANALYTICS_RETENTION: std::ops::RangeInclusive<u32> = 4..=730;
/// Basic and Auxiliary tables keep 30 days interactive; the API's retentionInDays is read-only.
pub const FIXED_RETENTION: u32 = 30;
/// Longest total retention (interactive plus long-term): 12 years.
pub const MAX_TOTAL_RETENTION: u32 = 4383;

/// Every problem with `plan` for the table `output_table` with `columns`; empty when it is fine.
pub fn problems(output_table: &str, plan: &TablePlan, _columns: &[Column]) -> Vec<String> {
    let mut found = Vec::new();
    match (plan.plan, plan.retention_days) {
        (Plan::Analytics, Some(days)) if !ANALYTICS_RETENTION.contains(&days) => {
            found.push(format!(
                "{output_table}: retention_days {days} is outside what the Analytics plan takes ({}..={} days)",
                ANALYTICS_RETENTION.start(),
                ANALYTICS_RETENTION.end()
            ));
        }
        (Plan::Basic | Plan::Auxiliary, Some(days)) => {
            found.push(format!(
                "{output_table}: the {} plan keeps {FIXED_RETENTION} days interactive, fixed (the API's retentionInDays is read-only there); remove retention_days {days} and set total_retention_days for longer",
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
    if plan.plan == Plan::Auxiliary && plan.total_retention_days.is_none() {
        found.push(format!(
            "{output_table}: an Auxiliary table needs total_retention_days (Microsoft's sample sets 365); the workspace default does not apply to it"
        ));
    }
    found
}

/// Makes `columns` what an Auxiliary table takes: dynamic and guid columns become strings.
/// Returns the dynamic ones, whose values rows must then carry as JSON text.
pub fn as_auxiliary(columns: &mut [Column]) -> Vec<String> {
    let mut as_text = Vec::new();
    for column in columns {
        match column.ty {
            ColumnType::Dynamic => {
                column.ty = ColumnType::String;
                as_text.push(column.name.clone());
            }
            ColumnType::Guid => column.ty = ColumnType::String,
            _ => {}
        }
    }
    as_text
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
        assert!(problems("T_CL", &plan(Plan::Basic, None, Some(4383)), &cols).is_empty());
        let analytics = problems("T_CL", &plan(Plan::Analytics, Some(1000), None), &cols);
        assert!(analytics[0].contains("4..=730"), "{analytics:?}");
        for days in [30, 90] {
            let basic = problems("T_CL", &plan(Plan::Basic, Some(days), None), &cols);
            assert!(basic[0].contains("read-only"), "{basic:?}");
        }
        let total = problems("T_CL", &plan(Plan::Basic, None, Some(5000)), &cols);
        assert!(total[0].contains("12 years"), "{total:?}");
        let shorter = problems("T_CL", &plan(Plan::Analytics, Some(90), Some(60)), &cols);
        assert!(
            shorter[0].contains("interactive retention (90)"),
            "{shorter:?}"
        );
    }

    #[test]
    fn an_auxiliary_table_holds_dynamic_and_guid_columns_as_strings() {
        let mut cols = vec![
            column("TimeGenerated", ColumnType::DateTime),
            column("AdditionalFields", ColumnType::Dynamic),
            column("OfficeId", ColumnType::Guid),
            column("Operation", ColumnType::String),
        ];
        let as_text = as_auxiliary(&mut cols);
        assert_eq!(as_text, ["AdditionalFields"]);
        let types: Vec<ColumnType> = cols.iter().map(|c| c.ty).collect();
        assert_eq!(
            types,
            [
                ColumnType::DateTime,
                ColumnType::String,
                ColumnType::String,
                ColumnType::String
            ]
        );
        let plan = TablePlan {
            plan: Plan::Auxiliary,
            total_retention_days: Some(365),
            ..TablePlan::default()
        };
        assert!(problems("T_CL", &plan, &cols).is_empty());
    }
}
