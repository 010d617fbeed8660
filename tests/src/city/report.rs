//! The day's summary: what happened where, the money per merchant, what was
//! quarantined and why, and the checks that tie the cards, the terminals'
//! journals and clearing together (`docs/demo.md` explains how to read it).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use card_host::Fen;
use clearing::DaySummary;
use clearing::api::QuarantineEntry;
use clearing::money::yuan;
use terminal::upload::UploadSummary;

use super::counters::{CounterDesk, CounterStats};
use super::kiosks::{KioskDesk, KioskStats};
use super::population::{Person, type_name};
use super::transit::{Bus, RouteStats};
use super::{CityError, CityOptions, Mode};

/// The lost card's part of the day.
#[derive(Debug, Clone, Default)]
pub struct LossStory {
    pub card: String,
    pub blacklist_version: i64,
    /// The route whose validator had not downloaded the blacklist yet, and what it showed.
    pub late_route: u16,
    pub late_tap: String,
    pub kiosk_refused: bool,
    pub co_payment_refused: bool,
    pub block_route: u16,
    pub block_tap: String,
    /// The validator blocked the card with APPLICATION BLOCK.
    pub blocked: bool,
    pub after_block: String,
}

/// The torn purchase.
#[derive(Debug, Clone, Default)]
pub struct TornStory {
    pub card: String,
    pub route: u16,
    pub through_pcscd: bool,
    /// The card was pulled during DEBIT.
    pub pulled: bool,
    pub first: String,
    pub again: String,
    /// What the card lost over both taps.
    pub charged: Fen,
    /// Journal rows of the torn tap (completed once, by GET TRANSACTION PROVE).
    pub journal_rows: u64,
    pub resolution: String,
    /// The card date-time of the torn tap (`YYYYMMDDhhmmss`), and clearing's cleared records of it.
    pub at: String,
    pub counted_in_clearing: Option<i64>,
}

/// A record sent again in a batch of its own, and that batch sent twice.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub batch_id: String,
    pub terminal: String,
    pub first_duplicate: bool,
    pub second_duplicate: bool,
    pub amount: Fen,
}

#[derive(Debug, Clone)]
pub struct RouteLine {
    pub route: u16,
    pub terminal: String,
    pub tariff: &'static str,
    pub through_pcscd: bool,
    pub stats: RouteStats,
}

#[derive(Debug, Clone)]
pub struct MerchantLine {
    pub merchant_id: String,
    pub name: String,
    pub records: i64,
    pub gross_fen: i64,
    pub fee_fen: i64,
    pub net_fen: i64,
    /// The merchant's terminals' journals: completed purchases.
    pub journal_fen: i64,
    /// Of them, quarantined by clearing.
    pub quarantined_fen: i64,
}

impl MerchantLine {
    /// Settled gross = what the terminals journaled, less what clearing quarantined.
    pub fn agrees(&self) -> bool {
        self.gross_fen == self.journal_fen - self.quarantined_fen
    }
}

#[derive(Debug, Clone)]
pub struct Quarantined {
    pub reason: String,
    pub detail: String,
    pub terminal: String,
    pub batch: String,
    pub card: String,
    pub amount_fen: i64,
}

#[derive(Debug, Clone)]
pub struct PcscdLine {
    pub route: u16,
    pub terminal: String,
    pub presentations: u64,
    pub apdus: u64,
}

/// A card whose image and shadow account differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub card: String,
    pub card_fen: i64,
    pub shadow_fen: i64,
    pub lost: bool,
}

#[derive(Debug, Clone)]
pub struct CityReport {
    pub seed: u64,
    pub mode: Mode,
    pub database: String,
    pub business_day: String,
    pub cards: u64,
    pub cards_by_type: BTreeMap<&'static str, u64>,
    pub opening_fen: u64,
    pub routes: Vec<RouteLine>,
    pub pcscd: Option<PcscdLine>,
    /// The terminals that read in-process.
    pub in_process: Vec<String>,
    pub journeys: u64,
    pub kiosks: KioskStats,
    pub counters: CounterStats,
    pub uploads: UploadSummary,
    pub replay: Replay,
    pub loss: LossStory,
    pub torn: TornStory,
    pub run_day: DaySummary,
    pub merchants: Vec<MerchantLine>,
    pub quarantined: Vec<Quarantined>,
    pub ledger_total_fen: i64,
    pub mismatches: Vec<Mismatch>,
    /// The lost card's late fare, quarantined: its card is that much below its shadow account.
    pub lost_late_fen: i64,
    pub elapsed: Duration,
}

impl CityReport {
    /// Taps of every kind on every route.
    pub fn taps(&self) -> u64 {
        self.routes.iter().map(|r| r.stats.flat + r.stats.tap_ins + r.stats.tap_outs).sum()
    }

    /// Every card's shadow account equals its image, but the lost card's, which
    /// is above it by exactly its quarantined late fare.
    pub fn shadows_agree(&self) -> bool {
        self.mismatches.iter().all(|m| m.lost && m.shadow_fen - m.card_fen == self.lost_late_fen)
    }

    /// The reasons clearing quarantined records for, with counts.
    pub fn quarantine_reasons(&self) -> BTreeMap<String, u64> {
        let mut reasons = BTreeMap::new();
        for q in &self.quarantined {
            *reasons.entry(q.reason.clone()).or_default() += 1;
        }
        reasons
    }

    /// The lost card was refused everywhere once the terminals had the blacklist.
    pub fn lost_card_refused(&self) -> bool {
        self.loss.kiosk_refused && self.loss.co_payment_refused && self.loss.blocked
    }

    /// The torn purchase: pulled at DEBIT, proved by the card, one journal row, one cleared record.
    pub fn torn_counted_once(&self) -> bool {
        self.torn.pulled
            && self.torn.again.starts_with("ALREADY PAID")
            && self.torn.journal_rows == 1
            && self.torn.counted_in_clearing == Some(1)
    }

    /// The checks the summary ends with.
    pub fn checks(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("ledger: the sum of all postings is 0", self.ledger_total_fen == 0),
            (
                "every card's shadow account = its card image (the lost card: less its quarantined late fare)",
                self.shadows_agree(),
            ),
            (
                "the lost card refused at kiosk, counter and validator (blocked) after the loss",
                self.lost_card_refused(),
            ),
            ("the torn purchase counted exactly once (card, journal, clearing)", self.torn_counted_once()),
            (
                "each merchant's settled gross = its terminals' journals less quarantined records",
                self.merchants.iter().all(MerchantLine::agrees),
            ),
            (
                "card float = the shadow accounts; settled = cleared (run-day's own checks)",
                self.run_day.card_float_matches_shadows && self.run_day.settled_equals_cleared,
            ),
        ]
    }

    pub fn all_checks_pass(&self) -> bool {
        self.checks().iter().all(|(_, ok)| *ok)
    }
}

fn count_map(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

fn fen(f: u64) -> String {
    yuan(i64::try_from(f).unwrap_or(i64::MAX))
}

impl fmt::Display for CityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== city day {} (seed {}, clearing on {}) ==", self.business_day, self.seed, self.database)?;
        let types = self.cards_by_type.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ");
        writeln!(f, "cards      {} issued ({types}); opening balances {} yuan", self.cards, fen(self.opening_fen))?;
        match &self.pcscd {
            Some(p) => writeln!(
                f,
                "readers    route {} validator {} through pcscd + vpcd: {} card presentations, {} APDUs through pcscd;\n           in-process: {}",
                p.route,
                p.terminal,
                p.presentations,
                p.apdus,
                self.in_process.join(", ")
            )?,
            None => writeln!(f, "readers    every terminal in-process: {}", self.in_process.join(", "))?,
        }
        writeln!(f, "buses      {} journeys, {} taps", self.journeys, self.taps())?;
        writeln!(
            f,
            "           {:<5} {:<12} {:<12} {:>6} {:>6} {:>7} {:>9} {:>11} {:>9} {:>7}  refused",
            "route", "terminal", "tariff", "flat", "tap-in", "tap-out", "fares", "concessions", "transfers", "again"
        )?;
        for r in &self.routes {
            let s = &r.stats;
            writeln!(
                f,
                "           {:<5} {:<12} {:<12} {:>6} {:>6} {:>7} {:>9} {:>11} {:>9} {:>7}  {}{}",
                r.route,
                r.terminal,
                r.tariff.trim_start_matches("bus-"),
                s.flat,
                s.tap_ins,
                s.tap_outs,
                fen(s.paid_fen),
                s.concessions,
                s.transfers,
                s.already_paid,
                count_map(&s.refused),
                if r.through_pcscd { "  [through pcscd]" } else { "" }
            )?;
        }
        let k = &self.kiosks;
        writeln!(
            f,
            "kiosks     {} online top-ups {} yuan; {} bills {} yuan; refused: {}",
            k.top_ups,
            fen(k.top_up_fen),
            k.bills,
            fen(k.bill_fen),
            count_map(&k.refused)
        )?;
        let c = &self.counters;
        writeln!(
            f,
            "hospital   {} visits registered, {} co-payments {} yuan; refused: {}",
            c.visits,
            c.co_payments,
            fen(c.co_payment_fen),
            count_map(&c.refused)
        )?;
        let l = &self.loss;
        writeln!(f, "lost card  {} reported lost at 12:30 (blacklist v{}):", l.card, l.blacklist_version)?;
        writeln!(f, "  12:40 route {} validator, blacklist not downloaded yet: {}", l.late_route, l.late_tap)?;
        writeln!(
            f,
            "  13:00 terminals upload and download the blacklist; kiosk top-up {}, co-payment {}",
            if l.kiosk_refused { "refused" } else { "TAKEN" },
            if l.co_payment_refused { "refused" } else { "TAKEN" }
        )?;
        writeln!(f, "  13:20 route {} validator: {}", l.block_route, l.block_tap)?;
        writeln!(f, "  13:25 route {} validator: {}", l.late_route, l.after_block)?;
        let t = &self.torn;
        writeln!(
            f,
            "torn       {} on route {}{}: card pulled during DEBIT: {}; presented again: {}",
            t.card,
            t.route,
            if t.through_pcscd { " (through pcscd, Control::tear_at)" } else { " (in-process tear)" },
            t.first,
            t.again
        )?;
        writeln!(
            f,
            "           GET TRANSACTION PROVE settled it: charged {} yuan once; journal rows {} ({}); cleared records {}",
            t.charged,
            t.journal_rows,
            t.resolution,
            t.counted_in_clearing.map_or("?".into(), |n| n.to_string())
        )?;
        let u = &self.uploads;
        writeln!(
            f,
            "uploads    {} signed batches, {} records; replay: batch {} of terminal {} sent twice (second {}), its record ({} yuan) already cleared in another batch",
            u.batches,
            u.records,
            self.replay.batch_id,
            self.replay.terminal,
            if self.replay.second_duplicate { "acknowledged as a duplicate, stored once" } else { "STORED AGAIN" },
            self.replay.amount
        )?;
        let d = &self.run_day;
        writeln!(
            f,
            "run-day    {}: {} records, {} cleared, {} quarantined, {} pending; purchases {} yuan, loads {} yuan",
            d.business_day,
            d.records,
            d.cleared,
            d.quarantined,
            d.pending,
            yuan(d.purchases_fen),
            yuan(d.loads_fen)
        )?;
        writeln!(
            f,
            "settlement {:<10} {:<26} {:>7} {:>12} {:>9} {:>12}",
            "merchant", "", "records", "gross", "fee", "net"
        )?;
        for m in &self.merchants {
            writeln!(
                f,
                "           {:<10} {:<26} {:>7} {:>12} {:>9} {:>12}{}",
                m.merchant_id,
                m.name,
                m.records,
                yuan(m.gross_fen),
                yuan(m.fee_fen),
                yuan(m.net_fen),
                if m.agrees() { "" } else { "  ≠ journals" }
            )?;
        }
        writeln!(
            f,
            "           {:<37} {:>7} {:>12} {:>9} {:>12}",
            "total",
            "",
            yuan(d.gross_fen),
            yuan(d.fee_fen),
            yuan(d.net_fen)
        )?;
        writeln!(
            f,
            "           settlement file {} signed by the HSM ({}…)",
            d.settlement_file,
            d.settlement_signature.chars().take(16).collect::<String>()
        )?;
        writeln!(f, "quarantine {} records:", self.quarantined.len())?;
        for q in &self.quarantined {
            writeln!(
                f,
                "  {:<16} card {} {} yuan, terminal {} batch {}: {}",
                q.reason,
                q.card,
                yuan(q.amount_fen),
                q.terminal,
                q.batch,
                q.detail
            )?;
        }
        writeln!(f, "checks")?;
        for (what, ok) in self.checks() {
            writeln!(f, "  [{}] {what}", if ok { " ok " } else { "FAIL" })?;
        }
        writeln!(
            f,
            "  ledger total {} fen; {} cards compared with their shadow accounts",
            self.ledger_total_fen, self.cards
        )?;
        write!(f, "wall time  {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// The parts of the day the summary reads.
pub struct DayParts<'a> {
    pub buses: &'a [Bus],
    pub kiosks: &'a [KioskDesk],
    pub counters: &'a [CounterDesk],
    pub kiosk_stats: &'a KioskStats,
    pub counter_stats: &'a CounterStats,
    pub journeys: u64,
}

pub struct Inputs<'a> {
    pub options: &'a CityOptions,
    pub clearing: &'a crate::clearing::Clearing,
    pub people: &'a [Person],
    pub day: DayParts<'a>,
    pub uploads: UploadSummary,
    pub replay: Replay,
    pub loss: LossStory,
    pub torn: TornStory,
    pub lost: usize,
    pub torn_person: usize,
    pub summary: DaySummary,
    pub ledger_total: i64,
    pub quarantine: Vec<QuarantineEntry>,
    pub elapsed: Duration,
}

fn sql_error(error: sqlx::Error) -> CityError {
    CityError::step("read clearing's database", error)
}

pub fn assemble(inputs: Inputs<'_>) -> Result<CityReport, CityError> {
    use sqlx::Row;
    let clearing = inputs.clearing;
    let pool = &clearing.db.pool;
    let runtime = &clearing.runtime;
    let day = &inputs.day;

    let mut cards_by_type = BTreeMap::new();
    for person in inputs.people {
        *cards_by_type.entry(type_name(person.card_type)).or_default() += 1;
    }
    let opening_fen = inputs.people.iter().map(|p| u64::from(p.opening.0)).sum();

    // Shadow accounts against the card images.
    let rows = runtime
        .block_on(sqlx::query("SELECT card_serial, balance_fen FROM cards").fetch_all(pool))
        .map_err(sql_error)?;
    let mut shadows = std::collections::HashMap::new();
    for row in rows {
        shadows.insert(
            row.try_get::<String, _>("card_serial").map_err(sql_error)?,
            row.try_get::<i64, _>("balance_fen").map_err(sql_error)?,
        );
    }
    let mut mismatches = Vec::new();
    for (n, person) in inputs.people.iter().enumerate() {
        let card_fen = i64::from(person.balance()?.0);
        let shadow_fen = shadows.get(&person.serial.to_hex()).copied().unwrap_or(-1);
        if card_fen != shadow_fen {
            mismatches.push(Mismatch { card: person.serial.masked(), card_fen, shadow_fen, lost: n == inputs.lost });
        }
    }

    // Quarantine, with the records' cards and amounts.
    let mut quarantined = Vec::new();
    let mut lost_late_fen = 0;
    let lost_serial = inputs.people[inputs.lost].serial.to_hex();
    for entry in &inputs.quarantine {
        let (card, amount) = match entry.transaction_id {
            Some(id) => {
                let row = runtime
                    .block_on(
                        sqlx::query("SELECT card_serial, amount_fen FROM transactions WHERE transaction_id = $1")
                            .bind(id)
                            .fetch_one(pool),
                    )
                    .map_err(sql_error)?;
                (
                    row.try_get::<String, _>("card_serial").map_err(sql_error)?,
                    row.try_get::<i64, _>("amount_fen").map_err(sql_error)?,
                )
            }
            None => (String::new(), 0),
        };
        if card == lost_serial && entry.reason == "blacklisted_card" {
            lost_late_fen += amount;
        }
        let masked =
            card_host::ApplicationSerial::parse_hex(&card).map(|s| s.masked()).unwrap_or_else(|_| card.clone());
        quarantined.push(Quarantined {
            reason: entry.reason.clone(),
            detail: entry.detail.clone(),
            terminal: entry.terminal_id.clone(),
            batch: entry.batch_id.clone(),
            card: masked,
            amount_fen: amount,
        });
    }

    // Merchants: settlement against the terminals' journals.
    let merchants_file = card_host::issue::fixtures::directory().join("merchants/test-merchants.json");
    let merchant_file: clearing::registry::MerchantFile = serde_json::from_str(
        &std::fs::read_to_string(merchants_file).map_err(|e| CityError::step("the merchant file", e))?,
    )
    .map_err(|e| CityError::step("the merchant file", e))?;
    let mut journal_fen: BTreeMap<String, i64> = BTreeMap::new();
    let mut add = |merchant: &str, journal: &terminal::journal::Journal| -> Result<(), CityError> {
        let counts = journal.counts().map_err(|e| CityError::step("journal counts", e))?;
        *journal_fen.entry(merchant.to_owned()).or_default() += i64::try_from(counts.completed_fen).unwrap_or(i64::MAX);
        Ok(())
    };
    for bus in day.buses {
        add(bus.spec.terminal.merchant, bus.validator.journal())?;
    }
    for desk in day.kiosks {
        add(desk.device.spec.merchant, desk.kiosk.journal())?;
    }
    for desk in day.counters {
        add(desk.device.spec.merchant, desk.counter.journal())?;
    }
    let mut quarantined_fen: BTreeMap<String, i64> = BTreeMap::new();
    let rows = runtime
        .block_on(
            sqlx::query(
                "SELECT m.merchant_id AS merchant_id, t.amount_fen AS amount_fen FROM quarantine q
             JOIN transactions t ON t.transaction_id = q.transaction_id
             JOIN terminals m ON m.terminal_number = t.terminal_number
             WHERE q.business_day = $1 AND t.kind = 'purchase' AND q.batch_id NOT LIKE 'replay-%'",
            )
            .bind(inputs.summary.business_day.clone())
            .fetch_all(pool),
        )
        .map_err(sql_error)?;
    for row in rows {
        *quarantined_fen.entry(row.try_get::<String, _>("merchant_id").map_err(sql_error)?).or_default() +=
            row.try_get::<i64, _>("amount_fen").map_err(sql_error)?;
    }
    let merchants = merchant_file
        .merchants
        .iter()
        .map(|merchant| {
            let line = inputs.summary.settlements.iter().filter(|s| s.merchant_id == merchant.merchant_id);
            let (records, gross, fee, net) = line.fold((0, 0, 0, 0), |(r, g, f, n), s| {
                (r + s.record_count, g + s.gross_fen, f + s.fee_fen, n + s.net_fen)
            });
            MerchantLine {
                merchant_id: merchant.merchant_id.clone(),
                name: merchant.name.clone(),
                records,
                gross_fen: gross,
                fee_fen: fee,
                net_fen: net,
                journal_fen: journal_fen.get(&merchant.merchant_id).copied().unwrap_or(0),
                quarantined_fen: quarantined_fen.get(&merchant.merchant_id).copied().unwrap_or(0),
            }
        })
        .collect();

    // The torn purchase in clearing.
    let mut torn = inputs.torn;
    let torn_serial = inputs.people[inputs.torn_person].serial.to_hex();
    torn.counted_in_clearing = Some(
        runtime.block_on(
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM record_states WHERE card_serial = $1 AND occurred_at = $2 AND state = 'cleared'",
            )
            .bind(torn_serial)
            .bind(torn.at.clone())
            .fetch_one(pool),
        )
        .map_err(sql_error)?,
    );

    let pcscd = day.buses.iter().find_map(|bus| {
        bus.lane.as_ref().map(|lane| PcscdLine {
            route: bus.spec.route,
            terminal: bus.spec.terminal.number.to_string(),
            presentations: lane.presentations(),
            apdus: lane.apdus(),
        })
    });
    let routes = day
        .buses
        .iter()
        .map(|bus| RouteLine {
            route: bus.spec.route,
            terminal: bus.spec.terminal.number.to_string(),
            tariff: bus.spec.tariff.trim_end_matches(".toml"),
            through_pcscd: bus.through_pcscd(),
            stats: bus.stats.clone(),
        })
        .collect();
    let mut in_process: Vec<String> = day
        .buses
        .iter()
        .filter(|bus| !bus.through_pcscd())
        .map(|bus| format!("route {} ({})", bus.spec.route, bus.spec.terminal.number))
        .collect();
    in_process.extend(day.kiosks.iter().map(|desk| format!("kiosk {}", desk.device.spec.number)));
    in_process.extend(day.counters.iter().map(|desk| format!("counter {}", desk.device.spec.number)));
    Ok(CityReport {
        seed: inputs.options.seed,
        mode: inputs.options.mode,
        database: clearing.database(),
        business_day: inputs.summary.business_day.clone(),
        cards: inputs.people.len() as u64,
        cards_by_type,
        opening_fen,
        routes,
        pcscd,
        in_process,
        journeys: day.journeys,
        kiosks: day.kiosk_stats.clone(),
        counters: day.counter_stats.clone(),
        uploads: inputs.uploads,
        replay: inputs.replay,
        loss: inputs.loss,
        torn,
        run_day: inputs.summary,
        merchants,
        quarantined,
        ledger_total_fen: inputs.ledger_total,
        mismatches,
        lost_late_fen,
        elapsed: inputs.elapsed,
    })
}
