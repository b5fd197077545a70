//! runc-style argument parsing: `--flag value`, `--flag=value`, `-flag`, short aliases, boolean
//! flags that also take `=true|false`, and flags anywhere among the positionals unless the
//! command stops at its first positional (exec: the rest is the command line).

use std::collections::HashMap;

/// One flag a command accepts: its names (without dashes) and whether it takes a value.
pub struct Flag {
    pub names: &'static [&'static str],
    pub takes_value: bool,
}

pub const fn value(names: &'static [&'static str]) -> Flag {
    Flag {
        names,
        takes_value: true,
    }
}

pub const fn switch(names: &'static [&'static str]) -> Flag {
    Flag {
        names,
        takes_value: false,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    BadBool { flag: String, value: String },
    #[error("invalid value {value:?} for -{flag}: {reason}")]
    BadValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// Parsed flags (keyed by each flag's first name; repeated flags keep every value) and
/// positionals.
#[derive(Debug, Default)]
pub struct Parsed {
    values: HashMap<&'static str, Vec<String>>,
    pub positionals: Vec<String>,
}

/// Parses `args` against `flags`. With `stop_at_positional`, everything from the first
/// positional on is positional (a following `--` included, as runc exec).
pub fn parse(
    args: &[String],
    flags: &[Flag],
    stop_at_positional: bool,
) -> Result<Parsed, ArgError> {
    let mut out = Parsed::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.positionals.extend(it.by_ref().cloned());
            break;
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            out.positionals.push(arg.clone());
            if stop_at_positional {
                out.positionals.extend(it.by_ref().cloned());
                break;
            }
            continue;
        };
        if body.is_empty() {
            // A lone "-" (stdin) is a positional.
            out.positionals.push(arg.clone());
            continue;
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let flag = flags
            .iter()
            .find(|f| f.names.contains(&name))
            .ok_or_else(|| ArgError::Unknown(name.to_string()))?;
        let value = if flag.takes_value {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| ArgError::MissingValue(name.to_string()))?,
            }
        } else {
            match inline.as_deref() {
                None | Some("true") | Some("1") => "true".to_string(),
                Some("false") | Some("0") => "false".to_string(),
                Some(v) => {
                    return Err(ArgError::BadBool {
                        flag: name.to_string(),
                        value: v.to_string(),
                    })
                }
            }
        };
        out.values.entry(flag.names[0]).or_default().push(value);
    }
    Ok(out)
}

impl Parsed {
    /// The last value given for the flag named `name` (its first name).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn on(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// A flag parsed as a number.
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ArgError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|e: T::Err| ArgError::BadValue {
                    flag: name.to_string(),
                    value: v.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// The single container id a command takes.
    pub fn id(&self, usage: &str) -> Result<&str, ArgError> {
        match self.positionals.as_slice() {
            [id] => Ok(id),
            [] => Err(ArgError::Usage(format!(
                "missing container id; usage: {usage}"
            ))),
            _ => Err(ArgError::Usage(format!(
                "expected exactly one container id, got {:?}; usage: {usage}",
                self.positionals
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        value(&["bundle", "b"]),
        switch(&["detach", "d"]),
        value(&["env", "e"]),
    ];

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn both_value_forms_aliases_and_repeats() {
        let p = parse(
            &s(&["--bundle", "/b", "id1", "-d", "-e=A=1", "--env", "B=2"]),
            FLAGS,
            false,
        )
        .unwrap();
        assert_eq!(p.get("bundle"), Some("/b"));
        assert!(p.on("detach"));
        assert_eq!(p.all("env"), ["A=1", "B=2"]);
        assert_eq!(p.positionals, ["id1"]);
        let p = parse(&s(&["-b=/x", "--detach=false", "id"]), FLAGS, false).unwrap();
        assert_eq!(p.get("bundle"), Some("/x"));
        assert!(!p.on("detach"));
    }

    #[test]
    fn stop_at_positional_keeps_the_command_line() {
        let p = parse(&s(&["-d", "c1", "sh", "-c", "x --env"]), FLAGS, true).unwrap();
        assert!(p.on("detach"));
        assert_eq!(p.positionals, ["c1", "sh", "-c", "x --env"]);
        let p = parse(&s(&["c1", "--", "ls", "-l"]), FLAGS, false).unwrap();
        assert_eq!(p.positionals, ["c1", "ls", "-l"]);
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(
            parse(&s(&["--nope"]), FLAGS, false).unwrap_err(),
            ArgError::Unknown("nope".into())
        );
        assert_eq!(
            parse(&s(&["--bundle"]), FLAGS, false).unwrap_err(),
            ArgError::MissingValue("bundle".into())
        );
        assert!(matches!(
            parse(&s(&["--detach=maybe"]), FLAGS, false).unwrap_err(),
            ArgError::BadBool { .. }
        ));
        let p = parse(&s(&["a", "b"]), FLAGS, false).unwrap();
        assert!(p.id("x").is_err());
    }
}
