//! `openapi.json` as the contract test reads it: the operations and the statuses each
//! documents, and a validator for the JSON Schema subset the document uses. The validator
//! records every documented property and every property a body carried, so the test can name
//! both what is sent but undocumented and what is documented but never sent.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// An operation: (`GET`, `/auctions/{id}`).
pub type Op = (String, String);

pub struct Spec {
    pub doc: Value,
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

impl Spec {
    pub fn load() -> Spec {
        let doc = serde_json::from_str(crate::http::api::ops::OPENAPI_JSON)
            .expect("invariant: openapi.json is JSON");
        Spec { doc }
    }

    /// Every documented operation with its documented statuses.
    pub fn operations(&self) -> BTreeMap<Op, BTreeSet<u16>> {
        let mut operations = BTreeMap::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let statuses = operation["responses"]
                    .as_object()
                    .expect("responses")
                    .keys()
                    .map(|status| status.parse().expect("numeric status"))
                    .collect();
                operations.insert((method.to_uppercase(), path.clone()), statuses);
            }
        }
        operations
    }

    fn operation(&self, op: &Op) -> &Value {
        &self.doc["paths"][&op.1][op.0.to_lowercase()]
    }

    /// Follows `$ref`s to the value they name.
    pub fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            value = self
                .doc
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        }
        value
    }

    /// The documented response of `op` for `status`, if any.
    pub fn response(&self, op: &Op, status: u16) -> Option<&Value> {
        let response = self.operation(op)["responses"].get(status.to_string())?;
        Some(self.resolve(response))
    }

    /// The names of the query parameters `op` documents.
    pub fn query_parameters(&self, op: &Op) -> BTreeSet<String> {
        let operation = self.operation(op);
        let path_level = &self.doc["paths"][&op.1]["parameters"];
        [&operation["parameters"], path_level]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|parameter| self.resolve(parameter))
            .filter(|parameter| parameter["in"] == "query")
            .map(|parameter| parameter["name"].as_str().expect("name").to_owned())
            .collect()
    }

    /// The JSON request body schema of `op`, if it takes one.
    pub fn request_schema(&self, op: &Op) -> Option<&Value> {
        let body = self.operation(op).get("requestBody")?;
        self.resolve(body)["content"]
            .get("application/json")?
            .get("schema")
    }
}

/// Where a schema sits: its `$ref` target, or the path from the nearest one.
type Location = String;

pub struct Validator<'a> {
    spec: &'a Spec,
    /// `location.property` of every object property the document declares where bodies went.
    pub declared: BTreeSet<String>,
    /// `location.property` of every property some body carried.
    pub seen: BTreeSet<String>,
}

impl<'a> Validator<'a> {
    pub fn new(spec: &'a Spec) -> Validator<'a> {
        Validator {
            spec,
            declared: BTreeSet::new(),
            seen: BTreeSet::new(),
        }
    }

    /// Checks `value` against `schema`; returns what does not fit (empty when it fits).
    pub fn check(&mut self, schema: &Value, location: &str, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.visit(schema, location.to_owned(), value, "$", &mut errors);
        errors
    }

    fn visit(
        &mut self,
        schema: &Value,
        mut location: Location,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            location = reference.to_owned();
        }
        let schema = self.spec.resolve(schema);
        for branch in schema["allOf"].as_array().into_iter().flatten() {
            self.visit(branch, location.clone(), value, at, errors);
        }
        for keyword in ["oneOf", "anyOf"] {
            if let Some(branches) = schema.get(keyword).and_then(Value::as_array) {
                self.visit_one_of(branches, &location, keyword, value, at, errors);
            }
        }
        if let Some(kinds) = schema.get("type") {
            if !type_matches(kinds, value) {
                errors.push(format!("{at}: {value} is not of type {kinds}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let (Some(minimum), Some(number)) = (schema["minimum"].as_f64(), value.as_f64()) {
            if number < minimum {
                errors.push(format!("{at}: {value} is below the minimum {minimum}"));
            }
        }
        if let Value::Object(object) = value {
            self.visit_object(schema, &location, object, at, errors);
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (index, item) in items.iter().enumerate() {
                let item_location = format!("{location}/items");
                self.visit(
                    item_schema,
                    item_location,
                    item,
                    &format!("{at}[{index}]"),
                    errors,
                );
            }
        }
    }

    /// A value fits when one branch fits; the fields that branch saw count as seen.
    fn visit_one_of(
        &mut self,
        branches: &[Value],
        location: &str,
        keyword: &str,
        value: &Value,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let mut fitting = None;
        for (index, branch) in branches.iter().enumerate() {
            let mut trial = Validator::new(self.spec);
            let mut trial_errors = Vec::new();
            let branch_location = format!("{location}/{keyword}/{index}");
            trial.visit(branch, branch_location, value, at, &mut trial_errors);
            if trial_errors.is_empty() {
                fitting = Some(trial);
                break;
            }
        }
        match fitting {
            Some(trial) => {
                self.seen.extend(trial.seen);
                self.declared.extend(trial.declared);
            }
            None => errors.push(format!("{at}: {value} fits no branch of {keyword}")),
        }
    }

    fn visit_object(
        &mut self,
        schema: &Value,
        location: &str,
        object: &serde_json::Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let empty = serde_json::Map::new();
        let properties = schema["properties"].as_object().unwrap_or(&empty);
        // A schema that lists no properties (a free-form object) declares nothing to hold to.
        if properties.is_empty() {
            return;
        }
        for name in properties.keys() {
            self.declared.insert(format!("{location}.{name}"));
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().expect("required names are strings");
            if !object.contains_key(name) {
                errors.push(format!("{at}: required field {name} is missing"));
            }
        }
        for (name, field) in object {
            match properties.get(name) {
                Some(field_schema) => {
                    self.seen.insert(format!("{location}.{name}"));
                    let field_location = format!("{location}/properties/{name}");
                    self.visit(
                        field_schema,
                        field_location,
                        field,
                        &format!("{at}.{name}"),
                        errors,
                    );
                }
                None => errors.push(format!("{at}: field {name} is not documented ({location})")),
            }
        }
    }
}

fn type_matches(kinds: &Value, value: &Value) -> bool {
    let one = |kind: &str| match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        other => panic!("openapi.json uses type {other}, which the contract test does not know"),
    };
    match kinds {
        Value::String(kind) => one(kind),
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).any(one),
        other => panic!("a schema's type must be a string or an array, not {other}"),
    }
}
