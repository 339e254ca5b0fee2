//! Python's keyword arguments, as the glance calls receive them: Folsom's
//! `{'args': (…), 'kwargs': {…}}` bound to the call's signature, or Diablo's flat dict;
//! then typed getters whose errors name the argument.

use super::{CallError, Result};
use crate::xapi::pickle::Py;

/// `fn(session, *args, **kwargs)`: positional args bound to the Python signature's
/// parameter names, then the keywords.
pub(super) struct Kwargs(Vec<(String, Py)>);

impl Kwargs {
    pub(super) fn bind(params: &Py, signature: &[&str]) -> Result<Kwargs> {
        let shape =
            || CallError::Argument("params must be a pickled {'args': (…), 'kwargs': {…}}".into());
        if !matches!(params, Py::Dict(_)) {
            return Err(shape());
        }
        let mut out = Vec::new();
        match params.get("args") {
            None => {}
            Some(Py::List(items)) => {
                if items.len() > signature.len() {
                    return Err(CallError::Argument(format!(
                        "{} positional arguments; at most {}",
                        items.len(),
                        signature.len()
                    )));
                }
                out.extend(
                    signature
                        .iter()
                        .map(|s| s.to_string())
                        .zip(items.iter().cloned()),
                );
            }
            Some(_) => return Err(shape()),
        }
        match params.get("kwargs") {
            None => {}
            Some(Py::Dict(items)) => {
                for (k, v) in items {
                    let Py::Str(k) = k else { return Err(shape()) };
                    if out.iter().any(|(n, _)| n == k) {
                        return Err(CallError::Argument(format!(
                            "argument {k} given by position and by keyword"
                        )));
                    }
                    out.push((k.clone(), v.clone()));
                }
            }
            Some(_) => return Err(shape()),
        }
        Ok(Kwargs(out))
    }

    /// Diablo's flat dict.
    pub(super) fn flat(params: &Py) -> Result<Kwargs> {
        match params {
            Py::Dict(items) => Ok(Kwargs(
                items
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Py::Str(k) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect(),
            )),
            other => Err(CallError::Argument(format!(
                "params must be a pickled dict, not {}",
                other.type_name()
            ))),
        }
    }

    /// Present, whatever the value (None included).
    pub(super) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Present and not None.
    pub(super) fn get(&self, key: &str) -> Option<&Py> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .filter(|v| **v != Py::None)
    }

    pub(super) fn req(&self, key: &str) -> Result<&Py> {
        self.get(key).ok_or_else(|| CallError::Missing(key.into()))
    }

    pub(super) fn string(&self, key: &str) -> Result<String> {
        match self.req(key)? {
            Py::Str(s) => Ok(s.clone()),
            other => Err(wrong(key, "a string", other)),
        }
    }

    pub(super) fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.req(key)? {
            Py::List(items) => items
                .iter()
                .map(|i| match i {
                    Py::Str(s) => Ok(s.clone()),
                    other => Err(wrong(key, "a list of strings", other)),
                })
                .collect(),
            other => Err(wrong(key, "a list of strings", other)),
        }
    }

    /// A dict of scalars, values as Python's `str()` writes them.
    pub(super) fn pairs(&self, key: &str) -> Result<Vec<(String, String)>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Py::Dict(items)) => items
                .iter()
                .map(|(k, v)| match (k, v.to_python_str()) {
                    (Py::Str(k), Some(v)) => Ok((k.clone(), v)),
                    _ => Err(wrong(key, "a dict of strings", v)),
                })
                .collect(),
            Some(other) => Err(wrong(key, "a dict", other)),
        }
    }

    pub(super) fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Py::Int(i)) => Ok(Some(*i)),
            Some(Py::Str(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| wrong(key, "an integer", &Py::Str(s.clone()))),
            Some(other) => Err(wrong(key, "an integer", other)),
        }
    }

    pub(super) fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Py::Bool(b)) => Ok(*b),
            Some(Py::Int(i)) => Ok(*i != 0),
            Some(Py::Str(s)) => Ok(matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "1" | "yes"
            )),
            Some(other) => Err(wrong(key, "a boolean", other)),
        }
    }
}

pub(super) fn wrong(key: &str, what: &str, got: &Py) -> CallError {
    CallError::Argument(format!(
        "argument {key} must be {what}, not {}",
        got.type_name()
    ))
}
