//! Progress of long steps: a bar on a terminal, plain lines on stderr otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use rmflow::config::Config;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Progress of a long step: a bar on a terminal, otherwise a plain line on stderr at the start,
/// at most every 10 s, and at the end (so logs of batch jobs show where a run is).
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Mutex<PlainState>,
    label: String,
    len: u64,
    unit: &'static str,
    start: Instant,
}

struct PlainState {
    pos: u64,
    last_print: Instant,
}

const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub fn progress_bar(label: &str, len: u64, unit: &'static str) -> Progress {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {label} {{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}"
            ))
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    if bar.is_none() {
        eprintln!("rmflow {label}: started ({len} {unit})");
    }
    Progress {
        bar,
        plain: Mutex::new(PlainState {
            pos: 0,
            last_print: Instant::now(),
        }),
        label: label.to_string(),
        len,
        unit,
        start: Instant::now(),
    }
}

impl Progress {
    /// A stage message (shown at once, without advancing).
    pub fn stage(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => eprintln!("rmflow {}: {msg}", self.label),
        }
    }

    /// One unit done, with a message.
    pub fn inc(&self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.inc(1);
            }
            None => {
                let mut s = self.plain.lock().unwrap_or_else(|e| e.into_inner());
                s.pos += 1;
                if s.last_print.elapsed() >= PLAIN_PROGRESS_EVERY {
                    s.last_print = Instant::now();
                    eprintln!(
                        "rmflow {}: {}/{} {} ({msg}), {:.0} s elapsed",
                        self.label,
                        s.pos,
                        self.len,
                        self.unit,
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn finish(self) {
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!(
                "rmflow {}: done in {:.1} s",
                self.label,
                self.start.elapsed().as_secs_f64()
            ),
        }
    }
}

/// The progress of a run observed at the config's observation times (both reward models),
/// starting with the setup stage.
pub fn observation_progress(label: &str, cfg: &Config) -> Progress {
    let n_obs = rmflow::solve::training::observation_times(&cfg.train).len() as u64;
    let p = progress_bar(label, 2 * n_obs, "observations");
    p.stage(&format!(
        "drawing the setup and solving the max-margin QPs (V = {}, D = {}, N = {})",
        cfg.vocab_size(),
        cfg.setup.dim,
        cfg.setup.train_pairs
    ));
    p
}
