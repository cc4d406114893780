//! Phases of a viewer run: how many viewers, how fast they arrive, how long the phase lasts
//! and how many leave and rejoin per minute. Given on the command line (one phase) or as a
//! TOML scenario file (several).

use std::time::Duration;

use cascade_protocol::duration::parse_duration;
use serde::Deserialize;

use crate::LoadtestError;

/// One phase of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Viewers to reach (and hold) during the phase.
    pub viewers: usize,
    /// New viewers per second while ramping up.
    pub ramp: f64,
    pub duration: Duration,
    /// Fraction of the viewers that leave and rejoin per minute.
    pub churn: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(rename = "phase")]
    phases: Vec<PhaseEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseEntry {
    viewers: usize,
    ramp: Option<f64>,
    duration: String,
    churn: Option<f64>,
}

impl Phase {
    /// Checks the values that would make a run meaningless.
    pub fn validate(&self) -> Result<(), LoadtestError> {
        if self.ramp <= 0.0 || !self.ramp.is_finite() {
            return Err(LoadtestError::Config(format!(
                "ramp must be a positive number of viewers per second, not {}",
                self.ramp
            )));
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return Err(LoadtestError::Config(format!(
                "churn is a fraction of viewers per minute between 0 and 1, not {}",
                self.churn
            )));
        }
        Ok(())
    }
}

/// Reads a scenario file's phases.
pub fn parse(text: &str, default_ramp: f64) -> Result<Vec<Phase>, LoadtestError> {
    let file: ScenarioFile =
        toml::from_str(text).map_err(|e| LoadtestError::Config(format!("scenario: {e}")))?;
    if file.phases.is_empty() {
        return Err(LoadtestError::Config(
            "scenario: no [[phase]] entries".into(),
        ));
    }
    file.phases
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let phase = Phase {
                viewers: entry.viewers,
                ramp: entry.ramp.unwrap_or(default_ramp),
                duration: parse_duration(&entry.duration).map_err(|e| {
                    LoadtestError::Config(format!("scenario phase {}: duration: {e}", i + 1))
                })?,
                churn: entry.churn.unwrap_or(0.0),
            };
            phase
                .validate()
                .map_err(|e| LoadtestError::Config(format!("scenario phase {}: {e}", i + 1)))?;
            Ok(phase)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_lists_phases_with_defaults() {
        let phases = parse(
            "[[phase]]\nviewers = 100\nramp = 20\nduration = \"30s\"\n\n[[phase]]\nviewers = 10\nduration = \"1m\"\nchurn = 0.5\n",
            50.0,
        )
        .unwrap();
        assert_eq!(
            phases,
            vec![
                Phase {
                    viewers: 100,
                    ramp: 20.0,
                    duration: Duration::from_secs(30),
                    churn: 0.0
                },
                Phase {
                    viewers: 10,
                    ramp: 50.0,
                    duration: Duration::from_secs(60),
                    churn: 0.5
                },
            ]
        );
    }

    #[test]
    fn bad_scenarios_say_what_is_wrong() {
        let err = parse("[[phase]]\nviewers = 1\nduration = \"soon\"\n", 1.0).unwrap_err();
        assert!(err.to_string().contains("phase 1: duration"), "{err}");
        let err = parse(
            "[[phase]]\nviewers = 1\nduration = \"1s\"\nchurn = 3\n",
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("churn"), "{err}");
        let err = parse(
            "[[phase]]\nviewers = 1\nduration = \"1s\"\ncolour = 3\n",
            1.0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert!(parse("", 1.0).is_err());
    }
}
