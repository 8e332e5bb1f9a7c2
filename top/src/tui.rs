//! The live terminal view: a scraper thread feeds frames, the UI thread draws them and reads keys.
//!
//! Scrapes run on their own thread so that keys (sort, filter, quit) answer at once even while
//! an exporter is slow; the UI keeps the last frame and shows the error of a failed scrape.

use std::sync::mpsc;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use ratatui::Frame;

use kvmio_exporter::errors::chain;

use crate::cli::SortKey;
use crate::model::{self, DiskRates, Snapshot};
use crate::scrape::{Scrape, Scraper};
use crate::view::{self, ViewState, HEADER};

/// What the scraper thread sends.
enum Update {
    Frame {
        disks: Vec<DiskRates>,
        skipped_lines: usize,
    },
    /// The first scrape: nothing to rate yet.
    Warming,
    Failed(String),
}

/// Scrapes every `interval` and sends a frame for each pair of scrapes in a row.
fn scrape_loop(scraper: Scraper, interval: Duration, tx: mpsc::Sender<Update>) {
    let mut prev: Option<(Scrape, Snapshot)> = None;
    loop {
        let update = match scraper.scrape() {
            Ok(scrape) => {
                let snap = Snapshot::from_samples(&scrape.samples);
                let update = match &prev {
                    Some((p, ps)) => Update::Frame {
                        disks: model::frame(ps, &snap, (scrape.at - p.at).as_secs_f64()),
                        skipped_lines: scrape.skipped_lines,
                    },
                    None => Update::Warming,
                };
                prev = Some((scrape, snap));
                update
            }
            Err(e) => {
                // A failed scrape breaks the pair: the next rate is over two good scrapes.
                prev = None;
                Update::Failed(chain(&e))
            }
        };
        if tx.send(update).is_err() {
            return;
        }
        std::thread::sleep(interval);
    }
}

struct App {
    url: String,
    interval: Duration,
    state: ViewState,
    disks: Vec<DiskRates>,
    status: String,
    error: Option<String>,
    /// The filter being typed, while `/` is active.
    editing: Option<String>,
}

impl App {
    /// Handles a key; false to quit.
    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        if modifiers.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if let Some(text) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    self.state.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                // VM names are short: bound what a held key can type.
                KeyCode::Char(c) if text.chars().count() < 128 => text.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') => return false,
            KeyCode::Char('n') => self.state.sort_by(SortKey::Name),
            KeyCode::Char('i') => self.state.sort_by(SortKey::Iops),
            KeyCode::Char('t') => self.state.sort_by(SortKey::Throughput),
            KeyCode::Char('l') => self.state.sort_by(SortKey::Latency),
            KeyCode::Char('m') => self.state.sort_by(SortKey::Merges),
            KeyCode::Char('r') => self.state.reverse = !self.state.reverse,
            KeyCode::Char('/') => self.editing = Some(self.state.filter.clone()),
            KeyCode::Esc => self.state.filter.clear(),
            _ => {}
        }
        true
    }

    fn update(&mut self, update: Update) {
        match update {
            Update::Frame {
                disks,
                skipped_lines,
            } => {
                self.disks = disks;
                self.error = None;
                self.status = if skipped_lines > 0 {
                    format!("{skipped_lines} malformed line(s) skipped")
                } else {
                    String::new()
                };
            }
            Update::Warming => {
                self.error = None;
                self.status = format!("first scrape done; rates after {:?}", self.interval);
            }
            Update::Failed(e) => self.error = Some(e),
        }
    }

    fn draw(&self, f: &mut Frame) {
        let [top, body, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let shown = view::arrange(self.disks.clone(), &self.state);
        let vms: std::collections::BTreeSet<&str> =
            shown.iter().map(|d| d.id.vm.as_str()).collect();
        let filter = if self.state.filter.is_empty() {
            String::new()
        } else {
            format!("  filter: {}", self.state.filter)
        };
        let head = format!(
            "kvmio-top  {}  every {:?}  {}{filter}  {} VM(s), {} disk(s)  {}",
            self.url,
            self.interval,
            self.state.describe(),
            vms.len(),
            shown.len(),
            self.status
        );
        f.render_widget(
            Paragraph::new(head).style(Style::default().add_modifier(Modifier::BOLD)),
            top,
        );

        let rows = view::rows(&shown);
        let mut widths = HEADER.map(|h| h.len() as u16);
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count() as u16);
            }
        }
        let constraints: Vec<Constraint> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == HEADER.len() - 1 {
                    Constraint::Fill(1)
                } else {
                    Constraint::Length(*w)
                }
            })
            .collect();
        let cell = |i: usize, text: String| {
            if view::numeric(i) {
                Cell::from(Line::from(text).right_aligned())
            } else {
                Cell::from(text)
            }
        };
        let header = Row::new(
            HEADER
                .iter()
                .enumerate()
                .map(|(i, h)| cell(i, (*h).to_owned())),
        )
        .style(Style::default().add_modifier(Modifier::REVERSED));
        let table_rows = rows.into_iter().map(|r| {
            let first = !r[0].is_empty();
            let row = Row::new(r.into_iter().enumerate().map(|(i, c)| cell(i, c)));
            if first {
                row.style(Style::default().fg(Color::Cyan))
            } else {
                row
            }
        });
        f.render_widget(
            Table::new(table_rows, constraints)
                .header(header)
                .column_spacing(2),
            body,
        );

        let foot = match (&self.editing, &self.error) {
            (Some(text), _) => Line::from(format!("filter VMs: {text}_   (Enter applies, Esc cancels)")),
            (None, Some(e)) => Line::from(format!("scrape failed: {e}")).style(Style::default().fg(Color::Red)),
            (None, None) => Line::from(
                "keys: n name  i IOPS  t throughput  l latency  m merges (again: reverse)  r reverse  / filter  Esc clear  q quit",
            ),
        };
        f.render_widget(Paragraph::new(foot), bottom);
    }
}

/// Runs the view until `q` or Ctrl-C.
pub fn run(scraper: Scraper, interval: Duration, state: ViewState) -> std::io::Result<()> {
    let url = scraper.url().to_owned();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || scrape_loop(scraper, interval, tx));
    let mut app = App {
        url,
        interval,
        state,
        disks: Vec::new(),
        status: "scraping...".into(),
        error: None,
        editing: None,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            while let Ok(update) = rx.try_recv() {
                app.update(update);
            }
            terminal.draw(|f| app.draw(f))?;
            if event::poll(Duration::from_millis(100))? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press && !app.key(k.code, k.modifiers) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}
