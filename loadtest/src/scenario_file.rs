//! Reading a scenario file, for `compare` and `plan` alike: the file, then its YAML into the
//! scenario's type (which rejects unknown keys). Each kind of scenario then checks its own values.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a scenario file could not be read into its type.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioFileError {
    /// The file cannot be read.
    #[error("reading scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not describe a scenario (serde's message names the field).
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads `path` and parses it.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, ScenarioFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioFileError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&text, &name)
}

/// Parses scenario YAML; `path` names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &str) -> Result<T, ScenarioFileError> {
    serde_saphyr::from_str(text).map_err(|e| ScenarioFileError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tiny {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let missing = read::<Tiny>(Path::new("/nonexistent/scenario.yaml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("reading scenario /nonexistent/scenario.yaml: "),
            "{missing}"
        );
        let typo = parse::<Tiny>("name: a\nnmae: b\n", "s.yaml").unwrap_err();
        let text = typo.to_string();
        assert!(text.starts_with("scenario s.yaml: "), "{text}");
        assert!(text.contains("nmae"), "{text}");
        assert!(parse::<Tiny>("name: a\n", "s.yaml").is_ok());
    }
}
