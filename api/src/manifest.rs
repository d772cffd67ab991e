//! Reading manifests: parse errors name the field by its path from the manifest's root, and the line, and a field
//! vmlet does not have (every struct refuses unknown fields) is called what it is: not supported by vmlet.

use serde::Deserialize;

use crate::VirtualMachine;

/// The `apiVersion` of vmlet's manifests.
pub const API_VERSION: &str = "vmlet.dev/v1alpha1";

/// A manifest that does not parse, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl From<serde_yaml::Error> for ParseError {
    fn from(err: serde_yaml::Error) -> ParseError {
        ParseError(describe(&err))
    }
}

/// Parses one YAML (or JSON) document as a `VirtualMachine`, straight from its text so that errors carry the line.
pub fn parse_vm(document: serde_yaml::Deserializer<'_>) -> Result<VirtualMachine, ParseError> {
    Ok(VirtualMachine::deserialize(document)?)
}

/// serde_yaml's message, `PATH: MESSAGE at line L column C`, as `PATH.FIELD: not supported by vmlet (line L column
/// C)` for an unknown field, and `PATH: MESSAGE (line L column C)` otherwise.
pub fn describe(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    let location = err
        .location()
        .map(|at| format!(" (line {} column {})", at.line(), at.column()))
        .unwrap_or_default();
    let body = text.rfind(" at line ").map_or(text.as_str(), |end| &text[..end]);
    const UNKNOWN: &str = "unknown field `";
    if let Some(start) = body.find(UNKNOWN) {
        let path = body[..start].trim_end_matches(": ");
        let rest = &body[start + UNKNOWN.len()..];
        if let Some(end) = rest.find('`') {
            let name = &rest[..end];
            let field = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            return format!("{field}: not supported by vmlet{location}");
        }
    }
    format!("{body}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse_vm(serde_yaml::Deserializer::from_str(text)).unwrap_err().0
    }

    #[test]
    fn an_unknown_field_is_named_by_its_path_and_line() {
        let text = "apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: a}
spec:
  template:
    spec:
      domain:
        devices:
          gpus: []
";
        assert_eq!(
            error_of(text),
            "spec.template.spec.domain.devices.gpus: not supported by vmlet (line 9 column 11)"
        );
    }

    #[test]
    fn other_errors_keep_their_message_with_path_and_line() {
        let text = "apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: a}
spec:
  runStrategy: Sometimes
  template: {spec: {domain: {}}}
";
        let message = error_of(text);
        assert!(
            message.starts_with("spec.runStrategy: unknown variant `Sometimes`"),
            "{message}"
        );
        assert!(message.ends_with("(line 5 column 16)"), "{message}");
    }
}
