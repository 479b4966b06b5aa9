//! Progress of long steps: a bar on a terminal, plain lines on stderr otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use rmflow::config::Config;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Progress of a long step: a bar on a terminal, otherwise a plain line on stderr at the start,
/// at every stage, at most every 10 s while units advance, and at the end (so logs of batch jobs
/// show where a run is). A stage in which nothing advances (loading a model, drawing a setup,
/// solving a QP, an evaluation pass) is reported every 10 s by a heartbeat, with the time spent
/// in it.
pub struct Progress {
    bar: Option<ProgressBar>,
    shared: Arc<Shared>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    plain: Mutex<PlainState>,
    done: AtomicBool,
    label: String,
    len: u64,
    unit: &'static str,
    start: Instant,
}

struct PlainState {
    pos: u64,
    last_print: Instant,
    stage: String,
    /// How far the stage has come (`1,200 of 3,200 sequences scored`), shown by the heartbeat.
    detail: String,
    stage_start: Instant,
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
    let shared = Arc::new(Shared {
        plain: Mutex::new(PlainState {
            pos: 0,
            last_print: Instant::now(),
            stage: "starting".into(),
            detail: String::new(),
            stage_start: Instant::now(),
        }),
        done: AtomicBool::new(false),
        label: label.to_string(),
        len,
        unit,
        start: Instant::now(),
    });
    let heartbeat = bar.is_none().then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || shared.beat())
    });
    Progress {
        bar,
        shared,
        heartbeat,
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PlainState> {
        self.plain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every 10 s without a line: `still STAGE, N s in it`. Parks until the next line is due;
    /// [`Progress::stop`] unparks it, so finishing costs no wait.
    fn beat(&self) {
        while !self.done.load(Ordering::Acquire) {
            let due = PLAIN_PROGRESS_EVERY.saturating_sub(self.lock().last_print.elapsed());
            std::thread::park_timeout(due.max(Duration::from_millis(1)));
            let mut s = self.lock();
            if s.last_print.elapsed() >= PLAIN_PROGRESS_EVERY && !self.done.load(Ordering::Acquire)
            {
                s.last_print = Instant::now();
                eprintln!(
                    "rmflow {}: still {}{} ({:.0} s in this stage, {}/{} {}, {:.0} s elapsed)",
                    self.label,
                    s.stage,
                    s.detail,
                    s.stage_start.elapsed().as_secs_f64(),
                    s.pos,
                    self.len,
                    self.unit,
                    self.start.elapsed().as_secs_f64()
                );
            }
        }
    }
}

impl Progress {
    /// A stage message (shown at once, without advancing); times are then also counted from it.
    pub fn stage(&self, msg: &str) {
        let mut s = self.shared.lock();
        s.stage = msg.to_string();
        s.detail.clear();
        s.stage_start = Instant::now();
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => {
                s.last_print = Instant::now();
                eprintln!("rmflow {}: {msg}", self.shared.label);
            }
        }
    }

    /// How far the current stage has come, shown with it (by the heartbeat, or on the bar)
    /// without a line of its own (the real-model runs' scoring passes).
    #[cfg_attr(not(feature = "lm"), allow(dead_code))]
    pub fn detail(&self, msg: &str) {
        let mut s = self.shared.lock();
        s.detail = format!(": {msg}");
        if let Some(b) = &self.bar {
            b.set_message(format!("{}{}", s.stage, s.detail));
        }
    }

    /// One unit done, with a message.
    pub fn inc(&self, msg: &str) {
        let pos = self.shared.lock().pos + 1;
        self.advance_to(pos, msg);
    }

    /// `pos` units done, with a message (a resumed run's steps count from its checkpoint's).
    pub fn advance_to(&self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                self.shared.lock().pos = pos;
                b.set_message(msg.to_string());
                b.set_position(pos);
            }
            None => {
                let sh = &self.shared;
                let mut s = sh.lock();
                s.pos = pos;
                if s.last_print.elapsed() >= PLAIN_PROGRESS_EVERY {
                    s.last_print = Instant::now();
                    eprintln!(
                        "rmflow {}: {}/{} {} ({msg}), {:.0} s in this stage, {:.0} s elapsed",
                        sh.label,
                        s.pos,
                        sh.len,
                        sh.unit,
                        s.stage_start.elapsed().as_secs_f64(),
                        sh.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn finish(mut self) {
        self.stop();
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!(
                "rmflow {}: done in {:.1} s",
                self.shared.label,
                self.shared.start.elapsed().as_secs_f64()
            ),
        }
    }

    fn stop(&mut self) {
        self.shared.done.store(true, Ordering::Release);
        if let Some(h) = self.heartbeat.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
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
