//! The `/test` chart: time to visible per probe, one lane per mode, and under the axis a mark
//! where the reader session saw time travel, as geometry the template draws as inline SVG.
//! Server-rendered: no script, no CDN, fine under a strict CSP.

use super::probe::{Run, VISIBLE_WITHIN};

const WIDTH: f64 = 760.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const LANE: f64 = 100.0;
const GAP: f64 = 40.0;
const TOP: f64 = 22.0;

#[derive(Debug)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub lanes: Vec<Lane>,
}

#[derive(Debug)]
pub struct Lane {
    pub mode: String,
    pub label_y: f64,
    pub axis_y: f64,
    pub ticks: Vec<Tick>,
    pub marks: Vec<Mark>,
}

#[derive(Debug)]
pub struct Tick {
    pub y: f64,
    pub label: String,
}

#[derive(Debug)]
pub struct Mark {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    /// `stale`, `fresh`, `primary`, `lost` (not visible within the watch window) or
    /// `travel` (under the axis: the reader missed a row it had seen).
    pub class: &'static str,
    pub title: String,
}

impl Chart {
    /// One lane per run. Every lane shares one scale, so modes compare at a glance.
    pub fn new(runs: &[Run]) -> Self {
        let watched = VISIBLE_WITHIN.as_secs_f64() * 1000.0;
        let max_ms = runs
            .iter()
            .flat_map(|r| &r.probes)
            .map(|p| match p.visible_ms {
                Some(ms) => ms,
                None if p.on_replica => watched,
                None => 0.0,
            })
            .fold(1.0_f64, f64::max);
        let lanes = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let top = TOP + i as f64 * (LANE + GAP);
                let axis_y = top + LANE;
                let n = run.probes.len().max(1) as f64;
                let slot = (WIDTH - LEFT - RIGHT) / n;
                let travel = run
                    .probes
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.time_travel > 0)
                    .map(|(j, p)| Mark {
                        x: round(LEFT + j as f64 * slot),
                        y: round(axis_y + 3.0),
                        w: round((slot - 1.0).max(1.0)),
                        h: 6.0,
                        class: "travel",
                        title: format!(
                            "#{}: time travel, the reader missed a row it had seen ({} of its reads)",
                            p.seq, p.time_travel
                        ),
                    });
                let marks = run
                    .probes
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let (ms, class) = match (p.on_replica, p.stale, p.visible_ms) {
                            (false, _, _) => (0.0, "primary"),
                            (true, true, Some(ms)) => (ms, "stale"),
                            (true, true, None) => (watched, "lost"),
                            (true, false, ms) => (ms.unwrap_or(p.read_ms), "fresh"),
                        };
                        // At least 2 px, so a fresh read or a primary read still shows.
                        let h = (ms / max_ms * LANE).max(2.0);
                        let title = match class {
                            "primary" => format!("#{}: read by the primary ({})", p.seq, p.reason),
                            "lost" => {
                                format!("#{}: stale, not visible on {} within 5 s", p.seq, p.node)
                            }
                            "stale" => {
                                format!("#{}: stale on {}, visible after {ms:.1} ms", p.seq, p.node)
                            }
                            _ => format!("#{}: fresh on {}", p.seq, p.node),
                        };
                        Mark {
                            x: round(LEFT + j as f64 * slot),
                            y: round(axis_y - h),
                            w: round((slot - 1.0).max(1.0)),
                            h: round(h),
                            class,
                            title,
                        }
                    })
                    .chain(travel)
                    .collect();
                let ticks = [0.0, 0.5, 1.0]
                    .into_iter()
                    .map(|f| Tick {
                        y: round(axis_y - f * LANE),
                        label: format!("{:.0} ms", f * max_ms),
                    })
                    .collect();
                Lane {
                    mode: run.summary.mode.to_string(),
                    label_y: round(top - 10.0),
                    axis_y: round(axis_y),
                    ticks,
                    marks,
                }
            })
            .collect();
        Self {
            width: WIDTH,
            height: round(TOP + runs.len() as f64 * (LANE + GAP)),
            lanes,
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
