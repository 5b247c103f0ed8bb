//! `flick top`: per function request rate, p50/p99 latency, errors, cold
//! starts, instances and memory from `GET /v1/stats`, refreshed in place
//! (ratatui over crossterm) and sortable; `--once`, or a stdout that is
//! not a terminal, prints one plain table instead.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::ValueEnum;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use serde::Deserialize;

use crate::cli::Global;
use crate::client::Client;
use crate::out::escape;

/// What the rows are ordered by (largest first, but the name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    Name,
    Rate,
    Latency,
    Errors,
    Cold,
    Instances,
    Memory,
}

impl SortKey {
    const ALL: [SortKey; 7] =
        [Self::Name, Self::Rate, Self::Latency, Self::Errors, Self::Cold, Self::Instances, Self::Memory];

    fn key(self) -> char {
        match self {
            Self::Name => 'n',
            Self::Rate => 'r',
            Self::Latency => 'l',
            Self::Errors => 'e',
            Self::Cold => 'c',
            Self::Instances => 'i',
            Self::Memory => 'm',
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Rate => "rate",
            Self::Latency => "p99",
            Self::Errors => "errors",
            Self::Cold => "cold",
            Self::Instances => "instances",
            Self::Memory => "memory",
        }
    }

    fn next(self, by: isize) -> Self {
        let at = Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as isize;
        Self::ALL[(at + by).rem_euclid(Self::ALL.len() as isize) as usize]
    }
}

pub struct TopArgs {
    pub once: bool,
    pub window: String,
    pub sort: SortKey,
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct Instances {
    starting: u32,
    idle: u32,
    busy: u32,
}

impl Instances {
    fn total(&self) -> u32 {
        self.starting + self.idle + self.busy
    }
}

#[derive(Clone, Debug, Deserialize)]
struct StatsRow {
    #[serde(default)]
    function: Option<String>,
    invocations: u64,
    rate_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    cold_starts: u64,
    instances: Instances,
    memory_bytes: u64,
    #[serde(default)]
    stem_cells: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
struct Report {
    window_s: u64,
    functions: Vec<StatsRow>,
    host: StatsRow,
}

async fn fetch(client: &Client, window: &str) -> anyhow::Result<Report> {
    let query = url::form_urlencoded::Serializer::new(String::new()).append_pair("window", window).finish();
    client.get(&format!("/v1/stats?{query}")).await
}

fn sort(rows: &mut [StatsRow], by: SortKey) {
    let name = |r: &StatsRow| r.function.clone().unwrap_or_default();
    rows.sort_by(|a, b| {
        let desc = match by {
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Rate => b.rate_per_s.total_cmp(&a.rate_per_s),
            SortKey::Latency => b.p99_ms.unwrap_or(-1.0).total_cmp(&a.p99_ms.unwrap_or(-1.0)),
            SortKey::Errors => b.errors.cmp(&a.errors),
            SortKey::Cold => b.cold_starts.cmp(&a.cold_starts),
            SortKey::Instances => b.instances.total().cmp(&a.instances.total()),
            SortKey::Memory => b.memory_bytes.cmp(&a.memory_bytes),
        };
        desc.then_with(|| name(a).cmp(&name(b)))
    });
}

const HEADER: [&str; 9] = ["FUNCTION", "RATE/S", "CALLS", "P50", "P99", "ERRORS", "COLD", "INST S/I/B", "MEM PEAK"];

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) => format!("{v:.1}ms"),
    }
}

fn mib(bytes: u64) -> String {
    if bytes == 0 { "-".into() } else { format!("{:.1}MiB", bytes as f64 / f64::from(1u32 << 20)) }
}

/// One row's cells, as text (function names escaped: they are shown on a terminal).
fn cells(r: &StatsRow, name: &str) -> [String; 9] {
    let i = &r.instances;
    [
        escape(name, false).into_owned(),
        format!("{:.2}", r.rate_per_s),
        r.invocations.to_string(),
        ms(r.p50_ms),
        ms(r.p99_ms),
        r.errors.to_string(),
        r.cold_starts.to_string(),
        format!("{}/{}/{}", i.starting, i.idle, i.busy),
        mib(r.memory_bytes),
    ]
}

fn rows_of(report: &Report, by: SortKey) -> Vec<[String; 9]> {
    let mut rows = report.functions.clone();
    sort(&mut rows, by);
    let mut out: Vec<[String; 9]> = rows.iter().map(|r| cells(r, r.function.as_deref().unwrap_or("?"))).collect();
    out.push(cells(&report.host, "(host)"));
    out
}

pub async fn top(g: &Global, client: Client, args: TopArgs) -> anyhow::Result<ExitCode> {
    // Checked once before anything is drawn: a bad window is an error, not a blank screen.
    let first = fetch(&client, &args.window).await?;
    if args.once || !std::io::stdout().is_terminal() {
        return print_once(&first, args.sort);
    }
    live(g, client, args, first).await
}

/// One plain table (for pipes, scripts and tests).
fn print_once(report: &Report, by: SortKey) -> anyhow::Result<ExitCode> {
    let rows = rows_of(report, by);
    let mut widths = HEADER.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(&HEADER.map(String::from)));
    for r in &rows {
        outln!("{}", line(r));
    }
    outln!(
        "window {}s, stem cells ready {}, sorted by {}",
        report.window_s,
        report.host.stem_cells.unwrap_or(0),
        by.label()
    );
    Ok(ExitCode::SUCCESS)
}

/// Keys read on a thread of their own (crossterm's reads block); it ends
/// when the screen loop is gone.
fn keys() -> mpsc::Receiver<event::KeyEvent> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    if let Ok(Event::Key(k)) = event::read()
                        && k.kind != KeyEventKind::Release
                        && tx.send(k).is_err()
                    {
                        return;
                    }
                }
                Ok(false) => {
                    // Nobody listens any more: stop reading the terminal.
                    if tx.send(event::KeyEvent::new(KeyCode::Null, KeyModifiers::NONE)).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    rx
}

async fn live(g: &Global, mut client: Client, args: TopArgs, first: Report) -> anyhow::Result<ExitCode> {
    let mut terminal = ratatui::try_init()?;
    let keys = keys();
    let (mut report, mut error, mut by) = (first, None::<String>, args.sort);
    let mut next_fetch = tokio::time::Instant::now() + args.interval;
    let result = loop {
        let drawn = terminal.draw(|frame| {
            let [head, body, foot] =
                Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)])
                    .areas(frame.area());
            let h = &report.host;
            let title = format!(
                "flick top [{}] {} — last {}s: {} calls, {:.2}/s, {} errors, {} cold; instances {}; stem cells {}",
                by.label(),
                client.base,
                report.window_s,
                h.invocations,
                h.rate_per_s,
                h.errors,
                h.cold_starts,
                h.instances.total(),
                h.stem_cells.unwrap_or(0)
            );
            frame.render_widget(Paragraph::new(title), head);
            let bold = Style::default().add_modifier(Modifier::BOLD);
            let header = Row::new(HEADER.iter().enumerate().map(|(i, h)| {
                let sorted = SortKey::ALL.iter().any(|k| *k == by && column_of(*k) == i);
                Line::from(if sorted { format!("{h}▼") } else { (*h).to_string() })
            }))
            .style(bold);
            let rows = rows_of(&report, by);
            let last = rows.len().saturating_sub(1);
            let rows = rows.into_iter().enumerate().map(|(i, r)| {
                let row = Row::new(r);
                if i == last { row.style(bold) } else { row }
            });
            let widths = [
                Constraint::Min(16),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(11),
                Constraint::Length(10),
            ];
            frame.render_widget(Table::new(rows, widths).header(header).block(Block::bordered()), body);
            let keys_help = SortKey::ALL.iter().map(|k| format!("{} {}", k.key(), k.label())).collect::<Vec<_>>();
            let footer = match &error {
                Some(e) => format!("{e} — retrying; q quits"),
                None => format!("sort: {} · Tab next · q/Esc quit", keys_help.join(" · ")),
            };
            frame.render_widget(Paragraph::new(footer), foot);
        });
        if let Err(e) = drawn {
            break Err(e.into());
        }
        let until =
            tokio::time::Instant::now().max(next_fetch.min(tokio::time::Instant::now() + Duration::from_millis(50)));
        tokio::time::sleep_until(until).await;
        let mut quit = false;
        while let Ok(k) = keys.try_recv() {
            let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
            match k.code {
                _ if ctrl_c => quit = true,
                KeyCode::Char('q') | KeyCode::Esc => quit = true,
                KeyCode::Tab => by = by.next(1),
                KeyCode::BackTab => by = by.next(-1),
                KeyCode::Char(c) => {
                    if let Some(k) = SortKey::ALL.iter().find(|k| k.key() == c) {
                        by = *k;
                    }
                }
                _ => {}
            }
        }
        if quit {
            break Ok(ExitCode::SUCCESS);
        }

        if tokio::time::Instant::now() >= next_fetch {
            next_fetch = tokio::time::Instant::now() + args.interval;
            match fetch(&client, &args.window).await {
                Ok(r) => (report, error) = (r, None),
                Err(e) => {
                    error = Some(e.to_string().lines().next().unwrap_or_default().to_string());
                    // flick may have restarted on another port: find it again.
                    if let Ok(c) = Client::connect(g).await {
                        client = c;
                    }
                }
            }
        }
    };
    ratatui::restore();
    result
}

/// The column a sort key orders by.
fn column_of(k: SortKey) -> usize {
    match k {
        SortKey::Name => 0,
        SortKey::Rate => 1,
        SortKey::Latency => 4,
        SortKey::Errors => 5,
        SortKey::Cold => 6,
        SortKey::Instances => 7,
        SortKey::Memory => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, rate: f64, errors: u64) -> StatsRow {
        StatsRow {
            function: Some(name.into()),
            invocations: 1,
            rate_per_s: rate,
            p50_ms: None,
            p99_ms: None,
            errors,
            cold_starts: 0,
            instances: Instances::default(),
            memory_bytes: 0,
            stem_cells: None,
        }
    }

    #[test]
    fn sorts_by_the_chosen_key_then_name() {
        let mut rows = vec![row("b", 1.0, 5), row("a", 3.0, 5), row("c", 2.0, 9)];
        sort(&mut rows, SortKey::Rate);
        assert_eq!(rows.iter().map(|r| r.function.clone().unwrap()).collect::<Vec<_>>(), ["a", "c", "b"]);
        sort(&mut rows, SortKey::Errors);
        assert_eq!(rows.iter().map(|r| r.function.clone().unwrap()).collect::<Vec<_>>(), ["c", "a", "b"]);
        sort(&mut rows, SortKey::Name);
        assert_eq!(rows.iter().map(|r| r.function.clone().unwrap()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(SortKey::Memory.next(1), SortKey::Name);
        assert_eq!(SortKey::Name.next(-1), SortKey::Memory);
    }
}
