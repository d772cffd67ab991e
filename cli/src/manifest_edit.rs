//! Changes one field of a manifest in its text, so that everything else the user wrote (comments, order, quoting,
//! other documents of the file) stays as it was. Every edit is checked by reading the document back: it must equal
//! the original with only that field changed, or the edit is refused and the file left alone.

use std::ops::Range;

use serde_yaml::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the document does not parse")]
    Parse(#[source] serde_yaml::Error),
    #[error("no top-level `{0}:` to change")]
    NoSection(&'static str),
    #[error("`{0}` appears more than once; change it by hand")]
    Ambiguous(&'static str),
    #[error("the edited document would differ elsewhere too; change `{0}` by hand")]
    NotOnlyTheField(String),
}

/// The byte ranges of a file's YAML documents, split at `---` lines.
pub fn documents(text: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            ranges.push(start..offset);
            start = offset + line.len();
        }
        offset += line.len();
    }
    ranges.push(start..text.len());
    ranges
}

/// `spec.runStrategy` set to `strategy`.
pub fn set_run_strategy(doc: &str, strategy: &str) -> Result<String, EditError> {
    set_spec_scalar(doc, "runStrategy", strategy, strategy.into())
}

/// `spec.running`, KubeVirt's older spelling of Always and Halted, set to `running`.
pub fn set_running(doc: &str, running: bool) -> Result<String, EditError> {
    set_spec_scalar(doc, "running", if running { "true" } else { "false" }, running.into())
}

/// `spec.KEY` set to `text`, which YAML reads as `value`.
fn set_spec_scalar(doc: &str, key: &'static str, text: &str, value: Value) -> Result<String, EditError> {
    let edited = edit_spec_scalar(doc, key, text)?;
    check(doc, &edited, &format!("spec.{key}"), |parsed| {
        mapping(parsed, "spec").insert(key.into(), value);
    })?;
    Ok(edited)
}

/// `metadata.annotations[key]` set to `value`.
pub fn set_annotation(doc: &str, key: &str, value: &str) -> Result<String, EditError> {
    let edited = edit_annotation(doc, key, value)?;
    check(doc, &edited, &format!("metadata.annotations.{key}"), |parsed| {
        let metadata = mapping(parsed, "metadata");
        if !matches!(metadata.get("annotations"), Some(Value::Mapping(_))) {
            metadata.insert("annotations".into(), Value::Mapping(Mapping::new()));
        }
        if let Some(Value::Mapping(annotations)) = metadata.get_mut("annotations") {
            annotations.insert(key.into(), value.into());
        }
    })?;
    Ok(edited)
}

/// The top-level mapping `key` of a document, made when missing.
fn mapping<'a>(doc: &'a mut Value, key: &str) -> &'a mut Mapping {
    let Value::Mapping(top) = doc else {
        *doc = Value::Mapping(Mapping::new());
        return mapping(doc, key);
    };
    if !matches!(top.get(key), Some(Value::Mapping(_))) {
        top.insert(key.into(), Value::Mapping(Mapping::new()));
    }
    match top.get_mut(key) {
        Some(Value::Mapping(inner)) => inner,
        _ => unreachable!("just made a mapping"),
    }
}

fn check(before: &str, after: &str, field: &str, change: impl FnOnce(&mut Value)) -> Result<(), EditError> {
    let mut expected: Value = serde_yaml::from_str(before).map_err(EditError::Parse)?;
    change(&mut expected);
    let got: Value = serde_yaml::from_str(after).map_err(|_| EditError::NotOnlyTheField(field.to_owned()))?;
    if got == expected {
        Ok(())
    } else {
        Err(EditError::NotOnlyTheField(field.to_owned()))
    }
}

/// Lines with their byte offsets.
fn lines(doc: &str) -> Vec<(usize, &str)> {
    let mut offset = 0;
    doc.split_inclusive('\n')
        .map(|line| {
            let at = offset;
            offset += line.len();
            (at, line)
        })
        .collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether a line holds nothing but a comment or blanks.
fn is_blank(line: &str) -> bool {
    let bare = line.trim();
    bare.is_empty() || bare.starts_with('#')
}

/// What follows `key:` at the start of `line` (after `indent` spaces), when the line is that key.
fn after_key<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start_matches(' ');
    for quoted in [key.to_owned(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(after) = rest.strip_prefix(&quoted).and_then(|r| r.strip_prefix(':')) {
            return Some(after);
        }
    }
    None
}

/// Whether what follows a key opens a nested block (nothing but a comment after the colon).
fn opens_block(after: &str) -> bool {
    is_blank(after)
}

/// Replaces the scalar that starts at or after `at` in `doc` (spaces skipped) with `value`.
fn replace_scalar(doc: &str, at: usize, value: &str) -> String {
    let rest = &doc[at..];
    let start = at + (rest.len() - rest.trim_start_matches(' ').len());
    let tail = &doc[start..];
    let len = match tail.chars().next() {
        Some(quote @ ('"' | '\'')) => tail[1..].find(quote).map_or(tail.len(), |end| end + 2),
        _ => tail[..tail.find([',', '}', '#', '\n', '\r']).unwrap_or(tail.len())]
            .trim_end()
            .len(),
    };
    format!("{}{value}{}", &doc[..start], &doc[start + len..])
}

fn insert(doc: &str, at: usize, text: &str) -> String {
    format!("{}{text}{}", &doc[..at], &doc[at..])
}

/// The top-level key `key`: its line's offset and what follows its colon.
fn top_level<'a>(lines: &[(usize, &'a str)], key: &'static str) -> Result<(usize, usize, &'a str), EditError> {
    let mut found = lines
        .iter()
        .enumerate()
        .filter(|(_, (_, line))| indent(line) == 0)
        .filter_map(|(i, (at, line))| after_key(line, key).map(|after| (i, *at, after)));
    let first = found.next().ok_or(EditError::NoSection(key))?;
    if found.next().is_some() {
        return Err(EditError::Ambiguous(key));
    }
    Ok(first)
}

/// The lines of the block under line `i` (more indented, up to the next line that is not), blanks included.
fn block(lines: &[(usize, &str)], i: usize) -> Range<usize> {
    let parent = indent(lines[i].1);
    let mut end = i + 1;
    for (j, (_, line)) in lines.iter().enumerate().skip(i + 1) {
        if is_blank(line) {
            continue;
        }
        if indent(line) <= parent {
            break;
        }
        end = j + 1;
    }
    i + 1..end
}

/// The indentation of a block's first entry, or the parent's plus two when it has none.
fn child_indent(lines: &[(usize, &str)], i: usize) -> usize {
    lines[block(lines, i)]
        .iter()
        .find(|(_, line)| !is_blank(line))
        .map_or(indent(lines[i].1) + 2, |(_, line)| indent(line))
}

/// Where a flow mapping that follows a key on `line` (at `line_at`) opens: the offset just after its `{`.
fn flow_open(line_at: usize, line: &str, after: &str) -> Option<usize> {
    let brace = after.find('{')?;
    after[..brace]
        .trim()
        .is_empty()
        .then(|| line_at + line.len() - after.len() + brace + 1)
}

/// Inserts `key: value` at the start of a flow mapping that opens at `open`.
fn insert_in_flow(doc: &str, open: usize, key: &str, value: &str) -> String {
    let empty = doc[open..].trim_start().starts_with('}');
    let entry = if empty {
        format!("{key}: {value}")
    } else {
        format!("{key}: {value}, ")
    };
    insert(doc, open, &entry)
}

/// The offset just after `key:` inside the flow mapping opening at `open` (one level only), if it is there.
fn find_in_flow(doc: &str, open: usize, key: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut entry_start = open;
    let bytes = doc.as_bytes();
    let mut i = open;
    while i < doc.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b'}' if depth == 0 => return None,
            b'}' => depth -= 1,
            b',' if depth == 0 => entry_start = i + 1,
            b':' if depth == 0 => {
                let name = doc[entry_start..i].trim().trim_matches(['"', '\'']);
                if name == key {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn edit_spec_scalar(doc: &str, key: &'static str, text: &str) -> Result<String, EditError> {
    let lines = lines(doc);
    let (i, at, after) = top_level(&lines, "spec")?;
    if let Some(open) = flow_open(at, lines[i].1, after) {
        return Ok(match find_in_flow(doc, open, key) {
            Some(value) => replace_scalar(doc, value, text),
            None => insert_in_flow(doc, open, key, text),
        });
    }
    if !opens_block(after) {
        return Err(EditError::NoSection("spec"));
    }
    let own = child_indent(&lines, i);
    let mut found = lines[block(&lines, i)]
        .iter()
        .filter(|(_, line)| indent(line) == own)
        .filter_map(|(line_at, line)| after_key(line, key).map(|a| line_at + line.len() - a.len()));
    match (found.next(), found.next()) {
        (Some(value), None) => Ok(replace_scalar(doc, value, text)),
        (Some(_), Some(_)) => Err(EditError::Ambiguous(key)),
        (None, _) => {
            let next_line = at + lines[i].1.len();
            Ok(insert(doc, next_line, &format!("{}{key}: {text}\n", " ".repeat(own))))
        }
    }
}

fn edit_annotation(doc: &str, key: &str, value: &str) -> Result<String, EditError> {
    let lines = lines(doc);
    let (i, at, after) = top_level(&lines, "metadata")?;
    if let Some(open) = flow_open(at, lines[i].1, after) {
        return Ok(match find_in_flow(doc, open, "annotations") {
            Some(annotations) => {
                let rest = &doc[annotations..];
                let inner = annotations + rest.find('{').ok_or(EditError::Ambiguous("annotations"))? + 1;
                match find_in_flow(doc, inner, key) {
                    Some(existing) => replace_scalar(doc, existing, value),
                    None => insert_in_flow(doc, inner, key, value),
                }
            }
            None => insert_in_flow(doc, open, "annotations", &format!("{{{key}: {value}}}")),
        });
    }
    if !opens_block(after) {
        return Err(EditError::NoSection("metadata"));
    }
    let own = child_indent(&lines, i);
    let annotations = lines[block(&lines, i)]
        .iter()
        .position(|(_, line)| indent(line) == own && after_key(line, "annotations").is_some())
        .map(|j| j + i + 1);
    let Some(j) = annotations else {
        let next_line = at + lines[i].1.len();
        let pad = " ".repeat(own);
        return Ok(insert(
            doc,
            next_line,
            &format!("{pad}annotations:\n{pad}  {key}: {value}\n"),
        ));
    };
    let (line_at, line) = lines[j];
    let after = after_key(line, "annotations").unwrap_or_default();
    if let Some(open) = flow_open(line_at, line, after) {
        return Ok(match find_in_flow(doc, open, key) {
            Some(existing) => replace_scalar(doc, existing, value),
            None => insert_in_flow(doc, open, key, value),
        });
    }
    let inner = child_indent(&lines, j);
    let existing = lines[block(&lines, j)]
        .iter()
        .filter(|(_, l)| indent(l) == inner)
        .find_map(|(l_at, l)| after_key(l, key).map(|a| l_at + l.len() - a.len()));
    Ok(match existing {
        Some(at) => replace_scalar(doc, at, value),
        None => insert(
            doc,
            line_at + line.len(),
            &format!("{}{key}: {value}\n", " ".repeat(inner)),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "# the web VM\napiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web # ours\n  labels: {app: web}\nspec:\n  # keep it up\n  runStrategy: Always   # see docs\n  template:\n    spec:\n      domain: {memory: {guest: 256Mi}}\n";

    #[test]
    fn the_run_strategy_changes_and_nothing_else() {
        let edited = set_run_strategy(BLOCK, "Halted").unwrap();
        assert_eq!(edited, BLOCK.replace("runStrategy: Always", "runStrategy: Halted"));
    }

    #[test]
    fn running_is_changed_where_it_is_in_block_and_flow_specs() {
        let doc = "metadata: {name: a}\nspec:\n  running: true # up\n  template: {spec: {}}\n";
        assert_eq!(
            set_running(doc, false).unwrap(),
            doc.replace("running: true", "running: false")
        );
        let doc = "metadata: {name: a}\nspec: {running: false, template: {spec: {}}}\n";
        assert_eq!(
            set_running(doc, true).unwrap(),
            doc.replace("running: false", "running: true")
        );
    }

    #[test]
    fn a_missing_run_strategy_is_added_at_the_specs_indentation() {
        let doc = "metadata: {name: a}\nspec:\n    template: {spec: {}}\n";
        assert_eq!(
            set_run_strategy(doc, "Always").unwrap(),
            "metadata: {name: a}\nspec:\n    runStrategy: Always\n    template: {spec: {}}\n"
        );
    }

    #[test]
    fn flow_specs_and_quoted_values_are_edited_in_place() {
        let doc = "metadata: {name: a}\nspec: {runStrategy: \"Manual\", template: {spec: {}}}\n";
        assert_eq!(
            set_run_strategy(doc, "Halted").unwrap(),
            "metadata: {name: a}\nspec: {runStrategy: Halted, template: {spec: {}}}\n"
        );
        let doc = "metadata: {name: a}\nspec: {template: {spec: {}}}\n";
        assert_eq!(
            set_run_strategy(doc, "Always").unwrap(),
            "metadata: {name: a}\nspec: {runStrategy: Always, template: {spec: {}}}\n"
        );
    }

    #[test]
    fn a_nested_run_strategy_is_not_the_vms() {
        // Only spec's own key counts; one deeper (a comment-like key in the template) is left alone.
        let doc =
            "metadata: {name: a}\nspec:\n  template:\n    metadata: {annotations: {runStrategy: x}}\n    spec: {}\n";
        let edited = set_run_strategy(doc, "Always").unwrap();
        assert!(edited.contains("spec:\n  runStrategy: Always\n  template:"), "{edited}");
    }

    #[test]
    fn annotations_are_added_or_changed_in_every_layout() {
        let edited = set_annotation(BLOCK, "vmlet.dev/run", "start").unwrap();
        assert_eq!(
            edited,
            BLOCK.replace("metadata:\n", "metadata:\n  annotations:\n    vmlet.dev/run: start\n")
        );
        let again = set_annotation(&edited, "vmlet.dev/run", "stop").unwrap();
        assert_eq!(again, edited.replace("run: start", "run: stop"));

        let doc = "metadata:\n  name: a\n  annotations:\n    other: \"x\"  # theirs\nspec: {}\n";
        assert_eq!(
            set_annotation(doc, "vmlet.dev/run", "start").unwrap(),
            "metadata:\n  name: a\n  annotations:\n    vmlet.dev/run: start\n    other: \"x\"  # theirs\nspec: {}\n"
        );

        let flow = "metadata: {name: a, namespace: default, uid: 5b0c}\nspec: {}\n";
        let edited = set_annotation(flow, "vmlet.dev/run", "start").unwrap();
        assert_eq!(
            edited,
            "metadata: {annotations: {vmlet.dev/run: start}, name: a, namespace: default, uid: 5b0c}\nspec: {}\n"
        );
        assert_eq!(
            set_annotation(&edited, "vmlet.dev/run", "stop").unwrap(),
            edited.replace("run: start", "run: stop")
        );
    }

    #[test]
    fn an_edit_that_would_change_more_is_refused() {
        // Two top-level specs: YAML itself refuses the duplicate key, and so does the edit.
        let doc = "metadata: {name: a}\nspec:\n  runStrategy: Always\nspec:\n  runStrategy: Always\n";
        assert!(set_run_strategy(doc, "Halted").is_err());
        let doc = "metadata: {name: a}\nspec: [1]\n";
        assert!(set_run_strategy(doc, "Halted").is_err());
    }

    #[test]
    fn documents_split_at_separators() {
        let text = "a: 1\n---\nb: 2\n--- # two\nc: 3\n";
        let docs: Vec<&str> = documents(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(docs, ["a: 1\n", "b: 2\n", "c: 3\n"]);
    }
}
