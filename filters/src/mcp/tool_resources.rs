//! Tools as Kubernetes-CRD-shaped files (`apiVersion: gostoa.dev/v1alpha1`, `kind: Tool`): the
//! shape a Kubernetes watcher will feed later, read here from a directory (`tools_dir`). Each
//! `*.yaml`/`*.yml` file holds one resource; its `spec` is a tool's config (`name` defaults to
//! `metadata.name`), in the CRD's camelCase (`inputSchema`, `outputSchema`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::tools::{HttpBackendConfig, ToolConfig};

pub const API_VERSION: &str = "gostoa.dev/v1alpha1";
pub const KIND: &str = "Tool";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ToolResource {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ToolSpec,
}

/// Kubernetes object metadata: only the name is used; the rest (namespace, labels, uid, ...)
/// is accepted as Kubernetes writes it.
#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ToolSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    input_schema: Option<Value>,
    #[serde(default)]
    output_schema: Option<Value>,
    #[serde(default)]
    annotations: Option<Value>,
    backend: HttpBackendConfig,
}

/// Read one resource's text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<ToolConfig, String> {
    let r: ToolResource = serde_saphyr::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    if r.api_version != API_VERSION {
        return Err(format!(
            "{origin}: apiVersion: `{}` (expected {API_VERSION})",
            r.api_version
        ));
    }
    if r.kind != KIND {
        return Err(format!("{origin}: kind: `{}` (expected {KIND})", r.kind));
    }
    let s = r.spec;
    Ok(ToolConfig {
        name: s.name.unwrap_or(r.metadata.name),
        title: s.title,
        description: s.description,
        input_schema: s
            .input_schema
            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        output_schema: s.output_schema,
        annotations: s.annotations,
        backend: s.backend,
    })
}

/// Every tool resource of a directory, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<ToolConfig>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("`{}`: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| format!("`{}`: {e}", f.display()))?;
            parse(&text, &f.display().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOURCE: &str = r#"apiVersion: gostoa.dev/v1alpha1
kind: Tool
metadata:
  name: get-invoice
  namespace: billing
  labels: { team: billing }
spec:
  name: get_invoice
  description: Fetch an invoice
  inputSchema:
    type: object
    required: [id]
    properties: { id: { type: string } }
  annotations: { readOnlyHint: true }
  backend:
    url: "http://billing/invoices/{id}"
    timeout: 3s
"#;

    #[test]
    fn parses_a_tool_resource() {
        let t = parse(RESOURCE, "t.yaml").unwrap();
        assert_eq!(t.name, "get_invoice");
        assert_eq!(t.input_schema["required"], serde_json::json!(["id"]));
        assert_eq!(t.backend.url, "http://billing/invoices/{id}");
        let unnamed = parse(&RESOURCE.replace("  name: get_invoice\n", ""), "t.yaml").unwrap();
        assert_eq!(unnamed.name, "get-invoice");
    }

    #[test]
    fn refuses_other_kinds_and_unknown_spec_keys() {
        let e = parse(&RESOURCE.replace("kind: Tool", "kind: Prompt"), "t.yaml").unwrap_err();
        assert!(e.contains("kind"), "{e}");
        let e = parse(&RESOURCE.replace("gostoa.dev/v1alpha1", "x/v1"), "t.yaml").unwrap_err();
        assert!(e.contains("apiVersion"), "{e}");
        let e = parse(
            &RESOURCE.replace("  description:", "  descripton:"),
            "t.yaml",
        )
        .unwrap_err();
        assert!(e.contains("t.yaml") && e.contains("descripton"), "{e}");
    }

    #[test]
    fn defaults_and_camel_case_fields() {
        let minimal = "apiVersion: gostoa.dev/v1alpha1\nkind: Tool\nmetadata: { name: ping }\nspec:\n  backend: { url: \"http://svc/ping\" }\n";
        let t = parse(minimal, "m.yaml").unwrap();
        assert_eq!(t.name, "ping");
        assert_eq!(t.description, "");
        assert_eq!(t.input_schema, serde_json::json!({"type": "object"}));
        assert!(t.title.is_none() && t.output_schema.is_none() && t.annotations.is_none());
        let full = RESOURCE.replace(
            "  annotations:",
            "  title: Invoice\n  outputSchema: { type: object }\n  annotations:",
        );
        let t = parse(&full, "t.yaml").unwrap();
        assert_eq!(t.title.as_deref(), Some("Invoice"));
        assert_eq!(t.output_schema, Some(serde_json::json!({"type": "object"})));
        assert_eq!(
            t.annotations,
            Some(serde_json::json!({"readOnlyHint": true}))
        );
        // The resource's own keys are camelCase too, and required.
        let e = parse(&RESOURCE.replace("apiVersion:", "api_version:"), "t.yaml").unwrap_err();
        assert!(e.contains("t.yaml"), "{e}");
        assert!(parse(&RESOURCE.replace("  backend:", "  other:"), "t.yaml").is_err());
    }

    #[test]
    fn loads_the_yaml_files_of_a_directory_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, name: &str| {
            let text = RESOURCE.replace("  name: get_invoice\n", &format!("  name: {name}\n"));
            std::fs::write(dir.path().join(file), text).unwrap();
        };
        write("b.yml", "second");
        write("a.yaml", "first");
        write("c.yaml.bak", "ignored");
        std::fs::write(dir.path().join("notes.txt"), "not a tool").unwrap();
        let tools = load_dir(dir.path()).unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        // A bad file fails the whole directory, naming the file.
        std::fs::write(dir.path().join("z.yaml"), "kind: Tool\n").unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(e.contains("z.yaml"), "{e}");
        let e = load_dir(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        assert!(load_dir(tempfile::tempdir().unwrap().path())
            .unwrap()
            .is_empty());
    }
}
