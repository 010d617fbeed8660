//! A whole simulated city day on the embedded defaults (`docs/demo.md`): a few
//! hundred cards issued through clearing's issuer API, riders tapping on four
//! bus routes, kiosks topping up online and paying bills, hospital counters
//! taking co-payments; one card reported lost mid-day, one purchase torn and
//! recovered; the terminals' journals uploaded as signed batches, run-day, the
//! settlement and the checks that tie cards, terminals and clearing together.
//!
//! One bus line's validator reads cards through the real pcscd with vpcd when
//! [`Mode::Pcscd`] (each card presented into the reader and taken out again);
//! every other terminal reads in-process. The plan of the day comes from the
//! seed alone, so both modes and every run of a seed give the same totals.

pub mod channel;
pub mod clock;
pub mod counters;
pub mod fleet;
pub mod kiosks;
pub mod population;
pub mod report;
pub mod transit;

use std::time::Instant;

use card_host::Fen;
use card_host::card::CardType;
use clearing::api::{Role, Tokens};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use terminal::bus::Tap;
use terminal::kiosk::Utility;
use terminal::upload::{BatchDocument, UploadSummary};

use self::clock::{DayClock, ISSUE_AT, LOSS_AT, TOP_UPS_FROM, hhmm};
use self::counters::{COUNTERS, CounterDesk, CounterStats};
use self::kiosks::{KIOSKS, KioskDesk, KioskStats};
use self::population::{Issuer, Person};
use self::report::{CityReport, LossStory, TornStory};
use self::transit::{Bus, Commute, Leg, PCSCD_ROUTE, ROUTES};
use crate::clearing::Clearing;

/// Limits of the options.
pub const CARDS_MIN: usize = 10;
pub const CARDS_MAX: usize = 5_000;
/// Errand slots per person in a day (each up to 100 minutes long).
pub const SLOTS: usize = 7;
/// Every this many people, one rides the pcscd line (route 1) from home.
pub const PCSCD_LINE_EVERY: usize = 12;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CityError {
    #[error("{what}: {detail}")]
    Step { what: &'static str, detail: String },
    #[error("--{option}: {reason}")]
    Option { option: &'static str, reason: String },
}

impl CityError {
    pub fn step(what: &'static str, detail: impl std::fmt::Display) -> CityError {
        CityError::Step { what, detail: detail.to_string() }
    }
}

/// Where the terminals' readers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every terminal reads in-process.
    InProcess,
    /// Route 1's validator reads through pcscd + vpcd; the rest in-process.
    Pcscd,
}

#[derive(Debug, Clone)]
pub struct CityOptions {
    pub cards: usize,
    /// Errands planned (journeys, top-ups, bills, hospital visits).
    pub errands: usize,
    pub seed: u64,
    /// Clearing on PostgreSQL at this server (a fresh schema), else SQLite.
    pub postgres: Option<String>,
    pub mode: Mode,
    pub progress: bool,
}

impl CityOptions {
    pub fn check(&self) -> Result<(), CityError> {
        if !(CARDS_MIN..=CARDS_MAX).contains(&self.cards) {
            let reason = format!("{CARDS_MIN} to {CARDS_MAX}, got {}", self.cards);
            return Err(CityError::Option { option: "cards", reason });
        }
        let most = self.cards * SLOTS - 16;
        if self.errands > most {
            let reason = format!("at most {most} for {} cards ({SLOTS} a person a day)", self.cards);
            return Err(CityError::Option { option: "transactions", reason });
        }
        if let Some(url) = &self.postgres
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(CityError::Option { option: "postgres", reason: "a postgres:// URL".into() });
        }
        Ok(())
    }
}

/// Clearing's HTTP API as the issuer and the operator use it (bearer tokens of this run).
pub struct Api {
    base: String,
    agent: ureq::Agent,
    issuer: String,
    operator: String,
}

impl Api {
    fn new(base: String, rng: &mut StdRng) -> (Api, Tokens) {
        let token = |rng: &mut StdRng, role: &str| format!("city-{role}-{:032x}", rng.random::<u128>());
        let (issuer, operator) = (token(rng, "issuer"), token(rng, "operator"));
        let mut tokens = Tokens::default();
        tokens.add(&issuer, Role::Issuer);
        tokens.add(&operator, Role::Operator);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        (Api { base, agent, issuer, operator }, tokens)
    }

    fn answer(
        &self,
        what: &'static str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<serde_json::Value, CityError> {
        let mut response = result.map_err(|error| CityError::step(what, error))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(|error| CityError::step(what, error))?;
        if !(200..300).contains(&status) {
            return Err(CityError::step(what, format!("HTTP {status}: {body}")));
        }
        serde_json::from_str(&body).map_err(|error| CityError::step(what, error))
    }

    pub fn post_issuer(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, CityError> {
        let request = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.issuer))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        self.answer("the issuer API", request)
    }

    pub fn get_operator(&self, path: &str) -> Result<serde_json::Value, CityError> {
        let request = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.operator))
            .call();
        self.answer("the operator API", request)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Errand {
    Journey,
    Bill(Utility, Fen),
    Visit(Fen),
}

/// What a journey may cost at most (two legs at the highest fare), for the kiosk hour.
const JOURNEY_FEN_MAX: u32 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Planned {
    sim: u32,
    person: usize,
    errand: Errand,
}

/// Slot starts: three in the morning (06:00–11:00), four in the afternoon
/// (13:30–20:10), 100 minutes apart, so a person's errands never overlap and
/// the lost card's story has the middle of the day.
const SLOT_STARTS: [u32; SLOTS] =
    [6 * 3600, 7 * 3600 + 2400, 9 * 3600 + 1200, 13 * 3600 + 1800, 15 * 3600 + 1200, 17 * 3600, 18 * 3600 + 2400];

struct Plan {
    errands: Vec<Planned>,
    /// What each person's errands may cost: they top up to it in the kiosk hour.
    needs: Vec<Fen>,
    commutes: Vec<Commute>,
    lost: usize,
    torn: usize,
}

fn plan(people: &[Person], errands: usize, rng: &mut StdRng) -> Plan {
    let lost = (1..people.len())
        .find(|&n| people[n].card_type == CardType::Ordinary && n % PCSCD_LINE_EVERY != 0)
        .unwrap_or(1);
    // The torn purchase's rider rides route 1 from home and pays a full fare.
    let candidates = || (1..people.len()).filter(|&n| n != lost && n % PCSCD_LINE_EVERY == 0);
    let fallback = if lost == 1 { 2 } else { 1 };
    let torn = candidates()
        .find(|&n| people[n].card_type == CardType::Ordinary)
        .or_else(|| candidates().next())
        .unwrap_or(fallback);
    let commutes: Vec<Commute> = (0..people.len())
        .map(|n| {
            if n == lost {
                return Commute { home: 1, change_to: None };
            }
            if n == torn {
                return Commute { home: 0, change_to: None };
            }
            let home = if n % PCSCD_LINE_EVERY == 0 { 0 } else { rng.random_range(1..ROUTES.len()) };
            let change_to = rng.random_bool(0.35).then(|| {
                let other = rng.random_range(1..ROUTES.len() - 1);
                if other >= home && home != 0 { other + 1 } else { other }
            });
            Commute { home, change_to: change_to.filter(|&c| c != home) }
        })
        .collect();
    let mut free: Vec<Vec<usize>> = (0..people.len()).map(|_| (0..SLOTS).collect()).collect();
    free[lost].clear();
    free[torn].clear();
    let mut planned = Vec::with_capacity(errands + 8);
    while planned.len() < errands {
        let person = rng.random_range(0..people.len());
        if free[person].is_empty() {
            continue;
        }
        let index = rng.random_range(0..free[person].len());
        let slot = free[person].swap_remove(index);
        let errand = match rng.random_range(0..100) {
            0..70 => Errand::Journey,
            70..85 => Errand::Bill(
                [Utility::Water, Utility::Electricity, Utility::Gas][rng.random_range(0..3)],
                Fen(rng.random_range(1_500..=25_000)),
            ),
            _ => Errand::Visit(Fen(rng.random_range(5..=80) * 100)),
        };
        planned.push(Planned { sim: SLOT_STARTS[slot] + rng.random_range(0..480), person, errand });
    }
    // The torn card's rider: a morning ride, and the torn one in the afternoon.
    planned.push(Planned { sim: 7 * 3600 + 600, person: torn, errand: Errand::Journey });
    planned.sort_by_key(|p| (p.sim, p.person));
    let mut needs = vec![Fen::ZERO; people.len()];
    for p in &planned {
        needs[p.person].0 += match p.errand {
            Errand::Journey => JOURNEY_FEN_MAX,
            Errand::Bill(_, amount) | Errand::Visit(amount) => amount.0,
        };
    }
    needs[torn].0 += JOURNEY_FEN_MAX;
    // The lost card's owner tops up in the morning, then loses the card.
    needs[lost] = Fen(5_000);
    Plan { errands: planned, needs, commutes, lost, torn }
}

/// The city's terminals.
struct Fleet {
    buses: Vec<Bus>,
    kiosks: Vec<KioskDesk>,
    counters: Vec<CounterDesk>,
}

impl Fleet {
    /// Every terminal uploads its journal, then downloads the blacklist.
    fn upload_round(&mut self, uploads: &mut UploadSummary) -> Result<(), CityError> {
        for bus in &mut self.buses {
            fleet::add(uploads, bus.device.upload(bus.validator.journal())?);
            bus.device.refresh_blacklist()?;
            bus.take_blacklist();
        }
        for desk in &mut self.kiosks {
            desk.kiosk.confirm_pending().map_err(|error| CityError::step("confirm top-ups", error))?;
            fleet::add(uploads, desk.device.upload(desk.kiosk.journal())?);
            desk.device.refresh_blacklist()?;
            desk.take_blacklist();
        }
        for desk in &mut self.counters {
            fleet::add(uploads, desk.device.upload(desk.counter.journal())?);
            desk.device.refresh_blacklist()?;
            desk.take_blacklist();
        }
        Ok(())
    }
}

/// A rider's state through the day.
#[derive(Debug, Clone, Copy, Default)]
struct Rider {
    last_route: Option<usize>,
}

struct Day<'a> {
    people: &'a [Person],
    commutes: &'a [Commute],
    riders: Vec<Rider>,
    fleet: Fleet,
    clock: DayClock,
    kiosk_stats: KioskStats,
    counter_stats: CounterStats,
    journeys: u64,
    rng: StdRng,
}

/// Top-ups stay below the purse's maximum balance.
const BALANCE_MAX: u32 = card_host::issue::BALANCE_MAX_DEFAULT.0;

impl Day<'_> {
    fn kiosk_for(&self, person: usize) -> usize {
        person % self.fleet.kiosks.len()
    }

    fn top_up(&mut self, person: usize, amount: Fen) -> Result<bool, CityError> {
        let who = &self.people[person];
        if who.balance()?.0 + amount.0 > BALANCE_MAX {
            return Ok(false);
        }
        let kiosk = self.kiosk_for(person);
        self.fleet.kiosks[kiosk].top_up(who, amount, &mut self.kiosk_stats)
    }

    /// The kiosk hour: the person tops up what their day may cost.
    fn kiosk_hour(&mut self, person: usize, need: Fen) -> Result<(), CityError> {
        let balance = self.people[person].balance()?;
        if balance >= need {
            return Ok(());
        }
        let room = BALANCE_MAX - balance.0;
        let amount = ((need.0 - balance.0).div_ceil(5_000) * 5_000).max(2_000).min(room).min(kiosks::TOPUP_FEN_MAX);
        if amount > 0 {
            self.top_up(person, Fen(amount))?;
        }
        Ok(())
    }

    fn errand(&mut self, planned: Planned) -> Result<(), CityError> {
        let person = planned.person;
        let at = self.clock.at(planned.sim);
        match planned.errand {
            Errand::Journey => self.journey(person, planned.sim)?,
            Errand::Bill(utility, amount) => {
                let kiosk = self.kiosk_for(person);
                self.fleet.kiosks[kiosk].pay_bill(&self.people[person], utility, amount, at, &mut self.kiosk_stats)?;
            }
            Errand::Visit(amount) => {
                let desk = person % self.fleet.counters.len();
                self.fleet.counters[desk].visit(&self.people[person], amount, at, &mut self.counter_stats)?;
            }
        }
        Ok(())
    }

    fn legs(&mut self, person: usize) -> Vec<Leg> {
        let commute = self.commutes[person];
        let first = self.riders[person].last_route.unwrap_or(commute.home);
        let second = commute.change_to.map(|other| if first == commute.home { other } else { commute.home });
        [Some(first), second]
            .into_iter()
            .flatten()
            .map(|route| {
                let stations = ROUTES[route].stations;
                let from = self.rng.random_range(1..stations);
                let to = self.rng.random_range(from + 1..=stations);
                let (from, to) = if self.rng.random_bool(0.5) { (from, to) } else { (to, from) };
                Leg { route, from, to }
            })
            .collect()
    }

    /// A journey of one or two legs from `sim`; the second leg is a transfer.
    fn journey(&mut self, person: usize, sim: u32) -> Result<(), CityError> {
        self.journeys += 1;
        let mut now = sim;
        for leg in self.legs(person) {
            let ride = self.rng.random_range(10..=40) * 60;
            if !self.ride(person, leg, now, ride)? {
                break;
            }
            self.riders[person].last_route = Some(leg.route);
            now += ride + self.rng.random_range(5..=12) * 60;
        }
        Ok(())
    }

    /// One leg; whether the rider travelled.
    fn ride(&mut self, person: usize, leg: Leg, sim: u32, ride: u32) -> Result<bool, CityError> {
        let who = &self.people[person];
        let bus = &mut self.fleet.buses[leg.route];
        let boarding = bus.tap(who, leg.from, self.clock.at(sim))?;
        if !boarding.lets_through() {
            return Ok(false);
        }
        if matches!(boarding, Tap::Paid { boarding: terminal::bus::Boarding::TapIn { .. }, .. }) {
            // A tap-out refused (the balance below the fare) leaves the trip
            // open; the validator counts the refusal.
            let alighting = bus.tap(who, leg.to, self.clock.at(sim + ride))?;
            return Ok(alighting.lets_through());
        }
        Ok(true)
    }

    /// The lost card mid-day: reported through the issuer API, one validator
    /// that has not downloaded the blacklist yet lets it ride (its record is
    /// cleared as blacklisted later), then every terminal refreshes and refuses it.
    fn lose(&mut self, lost: usize, api: &Api, uploads: &mut UploadSummary) -> Result<LossStory, CityError> {
        let person = &self.people[lost];
        self.clock.set_clearing(LOSS_AT);
        let answer =
            api.post_issuer(&format!("/v1/issuer/cards/{}/loss", person.serial.to_hex()), &serde_json::json!({}))?;
        let version = answer["blacklist_version"].as_i64().unwrap_or(0);
        let route = self.commutes[lost].home;
        let late = self.fleet.buses[route].tap(person, 3, self.clock.at(LOSS_AT + 600))?;
        self.fleet.upload_round(uploads)?;
        let kiosk = self.kiosk_for(lost);
        self.clock.set_clearing(LOSS_AT + 2400);
        let topped_up = self.fleet.kiosks[kiosk].top_up(person, Fen(5_000), &mut self.kiosk_stats)?;
        let desk = lost % self.fleet.counters.len();
        let co_paid = self.fleet.counters[desk].visit(
            person,
            Fen(1_500),
            self.clock.at(LOSS_AT + 2700),
            &mut self.counter_stats,
        )?;
        let blocked_at = self.fleet.buses[0].tap(person, 2, self.clock.at(LOSS_AT + 3000))?;
        let after_block = self.fleet.buses[route].tap(person, 4, self.clock.at(LOSS_AT + 3300))?;
        Ok(LossStory {
            card: person.serial.masked(),
            blacklist_version: version,
            late_route: ROUTES[route].route,
            late_tap: late.to_string(),
            kiosk_refused: !topped_up,
            co_payment_refused: !co_paid,
            block_route: ROUTES[0].route,
            block_tap: blocked_at.to_string(),
            blocked: matches!(
                blocked_at,
                Tap::Refused { reason: terminal::bus::Refusal::Blacklisted { blocked: true, .. }, .. }
            ),
            after_block: after_block.to_string(),
        })
    }
}

fn bar(progress: bool, length: u64, message: &'static str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(message);
    bar
}

/// Runs the city day; `note` is told what happens as it goes (one line each).
pub fn run(options: &CityOptions, note: &mut dyn FnMut(&str)) -> Result<CityReport, CityError> {
    options.check()?;
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(options.seed);
    if let Some(url) = &options.postgres {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CityError::step("runtime", e))?;
        runtime
            .block_on(clearing::Db::connect_plain(url))
            .map_err(|error| CityError::step("connect to PostgreSQL", error))?;
    }
    let clock = DayClock::today();
    let clearing = Clearing::start_on(options.postgres.as_deref());
    let directory = tempfile::tempdir().map_err(|error| CityError::step("a working directory", error))?;
    let cards_directory = directory.path().join("cards");
    let (api, tokens) = Api::new(String::new(), &mut rng);
    let (address, server) = clearing.serve_personalising(tokens, &cards_directory, clock.clearing_clock());
    let base = format!("http://{address}");
    let api = Api { base: base.clone(), ..api };
    note(&format!(
        "clearing on {} at {base}, in-process HSM; business day {} on simulated local time (UTC+8), clearing's clock following it",
        clearing.database(),
        clearing::BusinessDay::of(&clock.business_day()),
    ));

    // Issuance.
    clock.set_clearing(ISSUE_AT);
    let issuer = Issuer { api: &api, images: &cards_directory };
    let issuing = bar(options.progress, options.cards as u64, "issuing");
    let mut people = Vec::with_capacity(options.cards);
    for n in 0..options.cards {
        let opening = Fen(rng.random_range(0..=16) * 500);
        people.push(issuer.issue(n, &mut rng, opening)?);
        issuing.inc(1);
    }
    issuing.finish_and_clear();
    note(&format!(
        "issued {} cards through POST /v1/issuer/cards with personalisation: keys derived in the HSM, images written by clearing's station into {}",
        people.len(),
        cards_directory.display()
    ));

    // Terminals.
    let terminals = directory.path().join("terminals");
    std::fs::create_dir_all(&terminals).map_err(|error| CityError::step("the terminal directory", error))?;
    let mut buses = Vec::with_capacity(ROUTES.len());
    for spec in ROUTES {
        let bus = match Bus::open(spec, &terminals, &clearing, &base, options.mode) {
            // pcscd runs but its reader cannot be had: say so and read in-process.
            Err(error) if options.mode == Mode::Pcscd && spec.route == PCSCD_ROUTE => {
                note(&format!(
                    "pcscd: the vpcd reader is not usable ({error}); route {} in-process instead",
                    spec.route
                ));
                Bus::open(spec, &terminals, &clearing, &base, Mode::InProcess)?
            }
            other => other?,
        };
        buses.push(bus);
    }
    let kiosks = KIOSKS
        .iter()
        .map(|spec| KioskDesk::open(*spec, &terminals, &clearing, &base))
        .collect::<Result<Vec<_>, _>>()?;
    let counters = COUNTERS
        .iter()
        .map(|(spec, department)| CounterDesk::open(*spec, *department, &terminals, &clearing, &base))
        .collect::<Result<Vec<_>, _>>()?;
    let fleet = Fleet { buses, kiosks, counters };
    if let Some(bus) = fleet.buses.iter().find(|bus| bus.through_pcscd()) {
        note(&format!(
            "reader: route {}'s validator (terminal {}) through pcscd + vpcd: riders' cards presented one by one into slot 0, its PSAM in slot 1; every other terminal in-process",
            bus.spec.route, bus.spec.terminal.number
        ));
    } else if options.mode == Mode::InProcess {
        note("reader: every terminal in-process");
    }

    let Plan { errands, needs, commutes, lost, torn } = plan(&people, options.errands, &mut rng);
    let mut day = Day {
        people: &people,
        commutes: &commutes,
        riders: vec![Rider::default(); people.len()],
        fleet,
        clock: clock.clone(),
        kiosk_stats: KioskStats::default(),
        counter_stats: CounterStats::default(),
        journeys: 0,
        rng: StdRng::seed_from_u64(options.seed ^ 0x5eed_c17e),
    };
    // The kiosk hour, 05:00 to 06:00: each person tops up what their day may
    // cost; clearing's clock steps through the hour (it dates each load).
    let hour = bar(options.progress, people.len() as u64, "kiosk hour");
    let spacing = (3600 / needs.len().max(1)).max(1) as u32;
    for (person, need) in needs.iter().enumerate() {
        day.clock.set_clearing(TOP_UPS_FROM + (person as u32).saturating_mul(spacing).min(3599));
        day.kiosk_hour(person, *need)?;
        hour.inc(1);
    }
    hour.finish_and_clear();
    let mut uploads = UploadSummary::default();
    let the_day = bar(options.progress, errands.len() as u64 + 2, "the day");
    let (morning, afternoon): (Vec<Planned>, Vec<Planned>) = errands.into_iter().partition(|p| p.sim < LOSS_AT);
    for planned in morning {
        day.errand(planned)?;
        the_day.inc(1);
    }
    let loss = day.lose(lost, &api, &mut uploads)?;
    the_day.inc(1);
    let mut torn_story = None;
    let torn_sim = 17 * 3600 + 1500;
    for planned in afternoon {
        if torn_story.is_none() && planned.sim >= torn_sim {
            torn_story = Some(tear(&mut day, torn, torn_sim)?);
            the_day.inc(1);
        }
        if planned.person != lost {
            day.errand(planned)?;
        }
        the_day.inc(1);
    }
    let torn_story = match torn_story {
        Some(story) => story,
        None => tear(&mut day, torn, torn_sim)?,
    };
    the_day.finish_and_clear();
    note(&format!("the day ran from {} to {} (card time: local, UTC+8)", hhmm(clock::DAY_START), hhmm(clock::DAY_END)));

    // Evening: upload, a batch sent twice, a record replayed in a batch of its own.
    day.fleet.upload_round(&mut uploads)?;
    let replay = replay(&day.fleet.buses[2])?;
    let business_day = clearing::BusinessDay::of(&clock.business_day());
    let mut run_options = clearing::RunOptions::new(business_day, clearing.out.path());
    run_options.progress = options.progress;
    let (summary, _) = clearing
        .runtime
        .block_on(clearing::run_day(&clearing.db, &clearing.hsm, &run_options))
        .map_err(|error| CityError::step("run-day", error))?;
    let ledger_total =
        clearing.runtime.block_on(clearing::ledger::total(&clearing.db)).map_err(|e| CityError::step("ledger", e))?;
    let quarantine: Vec<clearing::api::QuarantineEntry> =
        serde_json::from_value(api.get_operator(&format!("/v1/operator/days/{business_day}/quarantine"))?)
            .map_err(|error| CityError::step("the quarantine list", error))?;

    let report = report::assemble(report::Inputs {
        options,
        clearing: &clearing,
        people: &people,
        day: report::DayParts {
            buses: &day.fleet.buses,
            kiosks: &day.fleet.kiosks,
            counters: &day.fleet.counters,
            kiosk_stats: &day.kiosk_stats,
            counter_stats: &day.counter_stats,
            journeys: day.journeys,
        },
        uploads,
        replay,
        loss,
        torn: torn_story,
        lost,
        torn_person: torn,
        summary,
        ledger_total,
        quarantine,
        elapsed: started.elapsed(),
    })?;
    server.abort();
    Ok(report)
}

/// The torn purchase: a rider of route 1 taps, the card is pulled during DEBIT,
/// and presented again.
fn tear(day: &mut Day<'_>, person: usize, sim: u32) -> Result<TornStory, CityError> {
    let who = &day.people[person];
    let bus = &mut day.fleet.buses[0];
    let before = who.balance()?;
    let torn = bus.torn_tap(who, 5, day.clock.at(sim))?;
    let after = who.balance()?;
    day.riders[person].last_route = Some(0);
    let rows = bus.validator.journal().completed_for(&who.serial).map_err(|e| CityError::step("journal", e))?;
    let at = day.clock.at(sim);
    let proved = rows.iter().filter(|row| row.entry.at == at).count();
    Ok(TornStory {
        card: who.serial.masked(),
        route: PCSCD_ROUTE,
        through_pcscd: bus.through_pcscd(),
        pulled: torn.pulled,
        first: torn.torn.to_string(),
        again: torn.again.to_string(),
        charged: Fen(before.0 - after.0),
        journal_rows: proved as u64,
        at: hex_digits(&at),
        resolution: rows
            .iter()
            .find(|row| row.entry.at == at)
            .map(|row| format!("{:?}", row.resolution))
            .unwrap_or_else(|| "none".into()),
        counted_in_clearing: None,
    })
}

/// A card date-time as clearing stores it: `YYYYMMDDhhmmss`.
fn hex_digits(at: &card_host::CardDateTime) -> String {
    at.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A record of route 8's validator sent again in a batch of its own (as a
/// terminal restored from a backup would), and that batch sent twice.
fn replay(bus: &Bus) -> Result<report::Replay, CityError> {
    let rows = bus
        .validator
        .journal()
        .recent_completed(terminal::journal::ROWS_MAX)
        .map_err(|e| CityError::step("journal", e))?;
    let Some(row) = rows.iter().rev().find(|row| row.entry.amount > Fen::ZERO) else {
        return Ok(report::Replay::default());
    };
    let record = terminal::journal::UploadRecord::Completed(row.clone());
    let document =
        BatchDocument::new(&bus.spec.terminal.number, format!("replay-{}", row.id), std::slice::from_ref(&record));
    let first = bus.device.client.upload_batch(&document).map_err(|e| CityError::step("the replayed batch", e))?;
    let again =
        bus.device.client.upload_batch(&document).map_err(|e| CityError::step("the replayed batch again", e))?;
    Ok(report::Replay {
        batch_id: document.batch_id.clone(),
        terminal: bus.spec.terminal.number.to_string(),
        first_duplicate: first.duplicate,
        second_duplicate: again.duplicate,
        amount: row.entry.amount,
    })
}
