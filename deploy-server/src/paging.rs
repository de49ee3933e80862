//! Bounded target lists. An environment may have 20,000 targets and a deployment as many: a response carries at most
//! [`ApiConfig::targets_per_response`](crate::ApiConfig) of them inline, always with `targets_total` and
//! `targets_next_cursor` (null when the list is complete), and `GET .../targets` pages through the rest. Summaries
//! and counts stay whole.

use serde::Serialize;
use serde_json::Value;

use crate::problem::Problem;

/// How many targets a response carries inline unless configured otherwise.
pub const DEFAULT_TARGETS_PER_RESPONSE: usize = 500;

/// `resource` as JSON with at most `inline` targets in its `targets` array, and `targets_total` and
/// `targets_next_cursor` beside it.
pub(crate) fn bounded<T: Serialize>(resource: &T, inline: usize) -> Result<Value, Problem> {
    let mut body = serde_json::to_value(resource).map_err(|e| Problem::internal(&e))?;
    if let Some(map) = body.as_object_mut() {
        let (total, next) = match map.get_mut("targets").and_then(Value::as_array_mut) {
            Some(targets) => {
                let total = targets.len();
                targets.truncate(inline.max(1));
                let next = (total > targets.len()).then(|| targets.last().map(target_id)).flatten();
                (total, next)
            }
            None => (0, None),
        };
        map.insert("targets_total".into(), total.into());
        map.insert("targets_next_cursor".into(), next.map_or(Value::Null, Value::String));
    }
    Ok(body)
}

/// Every item of `items` as [`bounded`] renders it.
pub(crate) fn bounded_all<T: Serialize>(items: &[T], inline: usize) -> Result<Vec<Value>, Problem> {
    items.iter().map(|item| bounded(item, inline)).collect()
}

fn target_id(target: &Value) -> String {
    target.get("id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A page of `targets` (in their order) after the target named by `cursor`, at most `limit`, and the cursor of the
/// next page. A cursor naming a target that is no longer there is refused: the list changed, start again.
pub(crate) fn page_after<'a, T>(
    targets: &'a [T],
    id_of: impl Fn(&T) -> &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(&'a [T], Option<String>), Problem> {
    let start = match cursor {
        None => 0,
        Some(after) => targets.iter().position(|t| id_of(t) == after).map(|i| i + 1).ok_or_else(|| {
            Problem::invalid_field(
                "cursor",
                "names a target that is no longer in the list (it changed since the first page): start again",
            )
        })?,
    };
    let page = targets.get(start..(start + limit.max(1)).min(targets.len())).unwrap_or_default();
    let next = (start + page.len() < targets.len()).then(|| page.last().map(|t| id_of(t).to_owned())).flatten();
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn long_target_lists_are_cut_with_a_cursor_and_pages_follow_it() {
        let ids: Vec<String> = (0..7).map(|i| format!("t-{i}")).collect();
        let resource = json!({"name": "e", "targets": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()});
        let cut = bounded(&resource, 3).unwrap();
        assert_eq!(cut["targets"].as_array().unwrap().len(), 3);
        assert_eq!(cut["targets_total"], 7);
        assert_eq!(cut["targets_next_cursor"], "t-2");
        let whole = bounded(&resource, 7).unwrap();
        assert_eq!((whole["targets_total"].clone(), whole["targets_next_cursor"].clone()), (json!(7), Value::Null));

        let mut seen = Vec::new();
        let mut cursor = cut["targets_next_cursor"].as_str().map(str::to_owned);
        seen.extend(ids.iter().take(3).cloned());
        while let Some(after) = cursor {
            let (page, next) = page_after(&ids, String::as_str, Some(&after), 3).unwrap();
            seen.extend(page.iter().cloned());
            cursor = next;
        }
        assert_eq!(seen, ids, "every target once, in order");
        assert!(page_after(&ids, String::as_str, Some("gone"), 3).is_err());
        let (last, next) = page_after(&ids, String::as_str, Some("t-6"), 3).unwrap();
        assert!(last.is_empty() && next.is_none());
    }
}
