//! The terminal loop of `top`: draw the view, poll keys, refresh from the
//! source. All numbers come from view.rs.
use std::time::{Duration, Instant};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Table},
};

use super::{
    Source,
    view::{self, Header, Row, View},
};
use crate::model::verdict::Leak;

struct State {
    view: View,
    header: Option<Header>,
    rows: Vec<Row>,
    error: Option<String>,
    help: bool,
    editing: bool,
}

const HELP: &str = "\
 s        next sort key (leaked, pin rate, live pins, locked_vm, name)
 /        filter by container or process (Enter keeps, Esc clears)
 ?        this help
 q, Esc   quit

 LIVE     zero-page pins held now (1024 references each)
 LEAKED   pins that will never be released
 PINS/s   zero-page pins taken per second
 LOCKED   locked_vm type1 charged
 MEMLOCK+ RLIMIT_MEMLOCK left (- : unlimited or CAP_IPC_LOCK)";

pub fn run(source: &Source, every: Duration) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let r = event_loop(&mut terminal, source, every);
    ratatui::restore();
    r
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    source: &Source,
    every: Duration,
) -> anyhow::Result<()> {
    let mut st = State {
        view: View::default(),
        header: None,
        rows: Vec::new(),
        error: None,
        help: false,
        editing: false,
    };
    let mut last: Option<Instant> = None;
    loop {
        if last.is_none_or(|t| t.elapsed() >= every) {
            last = Some(Instant::now());
            match source.fetch() {
                Ok(Some(s)) => {
                    st.rows = st.view.rows(&s);
                    st.header = Some(view::header(&s));
                    st.error = None;
                }
                Ok(None) => st.error = Some("waiting for the first snapshot...".into()),
                Err(e) => st.error = Some(format!("{e:#}")),
            }
        }
        terminal.draw(|f| draw(f, &st))?;
        if !event::poll(Duration::from_millis(100))? {
            continue;
        }
        let Event::Key(k) = event::read()? else {
            continue;
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
        if st.editing {
            match k.code {
                KeyCode::Enter => st.editing = false,
                KeyCode::Esc => {
                    st.editing = false;
                    st.view.filter.clear();
                }
                KeyCode::Backspace => {
                    st.view.filter.pop();
                }
                KeyCode::Char(c) if !ctrl_c => st.view.filter.push(c),
                _ => {}
            }
            last = None;
            if !ctrl_c {
                continue;
            }
        }
        match k.code {
            _ if ctrl_c => return Ok(()),
            KeyCode::Char('q') | KeyCode::Esc if !st.help => return Ok(()),
            KeyCode::Esc | KeyCode::Char('?') if st.help => st.help = false,
            KeyCode::Char('?') | KeyCode::Char('h') => st.help = true,
            KeyCode::Char('s') => {
                st.view.sort = st.view.sort.next();
                last = None;
            }
            KeyCode::Char('/') => st.editing = true,
            _ => {}
        }
    }
}

fn draw(f: &mut Frame, st: &State) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let lines: Vec<Line> = match (&st.header, &st.error) {
        (_, Some(e)) => vec![Line::from(format!("vfio-zp top: {e}"))],
        (Some(h), None) => view::text(h, &[])
            .lines()
            .take(4)
            .map(|l| Line::from(l.to_string()))
            .collect(),
        (None, None) => vec![Line::from("vfio-zp top: starting...")],
    };
    f.render_widget(Paragraph::new(lines), head);
    let widths = [
        Constraint::Min(20),
        Constraint::Length(22),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    let title = [
        "CONTAINER",
        "PROCESSES",
        "LIVE",
        "LEAKED",
        "PINS/s",
        "LOCKED",
        "MEMLOCK+",
        "VERDICT",
    ];
    let rows = st.rows.iter().map(|r| {
        let style = match r.leak {
            Leak::Leaking => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
            Leak::Uncertain => Style::default().fg(Color::Yellow),
            Leak::None => Style::default(),
        };
        TRow::new(vec![
            Cell::from(r.name.clone()),
            Cell::from(r.processes_short()),
            Cell::from(r.zero_pins_live.to_string()),
            Cell::from(r.leaked.to_string()),
            Cell::from(format!("{:.1}", r.pin_rate)),
            Cell::from(view::size(r.locked_vm_bytes)),
            Cell::from(r.memlock_headroom_bytes.map_or("-".into(), view::size)),
            Cell::from(format!("{:?}", r.leak)),
        ])
        .style(style)
    });
    let table = Table::new(rows, widths)
        .header(TRow::new(title).style(Style::default().add_modifier(Modifier::REVERSED)))
        .block(Block::default().borders(Borders::TOP).title(format!(
            " containers: {}  sort: {}  filter: {}{} ",
            st.rows.len(),
            st.view.sort.label(),
            if st.view.filter.is_empty() {
                "-"
            } else {
                &st.view.filter
            },
            if st.editing { "_" } else { "" }
        )));
    f.render_widget(table, body);
    f.render_widget(
        Paragraph::new(" q quit  s sort  / filter  ? help")
            .style(Style::default().add_modifier(Modifier::DIM)),
        foot,
    );
    if st.help {
        let area = body.inner(ratatui::layout::Margin::new(4, 1));
        f.render_widget(Clear, area);
        f.render_widget(
            Paragraph::new(HELP).block(Block::default().borders(Borders::ALL).title(" help ")),
            area,
        );
    }
}
