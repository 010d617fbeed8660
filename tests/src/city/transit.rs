//! Bus routes and riders: one validator per route (`terminal::bus::Validator`
//! with the fixture tariffs: flat fare, or distance fare from the tap-in to the
//! tap-out compound record; concessions by card type; transfer discounts), and
//! a rider's journey of one or two legs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use card_host::psam::Psam;
use card_host::vpcd::{Tear, TearPoint};
use card_host::{CardDateTime, Fen};
use terminal::CardSession;
use terminal::bus::{Boarding, BusSettings, Refusal, Tap, Validator};
use terminal::psam::PsamSession;
use terminal::reader::InProcess;
use terminal::tariff::Tariff;

use super::channel::{PcscdLane, Tearing};
use super::fleet::{self, BUS_MERCHANT, Device, TerminalSpec, terminal};
use super::population::Person;
use super::{CityError, Mode};

/// The validators' dedup window: the rides are longer than this.
pub const DEDUP_WINDOW_SECONDS: u32 = 2;
/// The card APDU of a first flat-fare tap that is DEBIT FOR PURCHASE: SELECT,
/// READ BINARY, READ RECORD, INITIALIZE, UPDATE CAPP DATA CACHE, DEBIT.
pub const DEBIT_APDU: u32 = 6;

/// A bus route of the city.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub route: u16,
    pub terminal: TerminalSpec,
    /// Under `fixtures/tariffs/`.
    pub tariff: &'static str,
    /// Stations along the route (distance fares).
    pub stations: u16,
}

/// Route 1 is the line whose validator reads cards through pcscd when it runs.
pub const PCSCD_ROUTE: u16 = 1;

pub const ROUTES: [RouteSpec; 4] = [
    RouteSpec {
        route: PCSCD_ROUTE,
        terminal: TerminalSpec { number: terminal([0x09, 0x01]), merchant: BUS_MERCHANT, seed: 0x01, fixture: true },
        tariff: "bus-flat.toml",
        stations: 18,
    },
    RouteSpec {
        route: 2,
        terminal: TerminalSpec { number: terminal([0x09, 0x11]), merchant: BUS_MERCHANT, seed: 0x11, fixture: false },
        tariff: "bus-flat.toml",
        stations: 22,
    },
    RouteSpec {
        route: 8,
        terminal: TerminalSpec { number: terminal([0x09, 0x12]), merchant: BUS_MERCHANT, seed: 0x12, fixture: false },
        tariff: "bus-distance.toml",
        stations: 24,
    },
    RouteSpec {
        route: 9,
        terminal: TerminalSpec { number: terminal([0x09, 0x13]), merchant: BUS_MERCHANT, seed: 0x13, fixture: false },
        tariff: "bus-distance.toml",
        stations: 30,
    },
];

/// What a route's validator saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub flat: u64,
    pub tap_ins: u64,
    pub tap_outs: u64,
    pub paid_fen: u64,
    pub concessions: u64,
    pub transfers: u64,
    pub already_paid: u64,
    /// Refusals by reason.
    pub refused: BTreeMap<String, u64>,
    pub present_again: u64,
}

/// One bus: its validator, its identity with clearing, its PSAM.
pub struct Bus {
    pub spec: RouteSpec,
    pub validator: Validator,
    pub device: Device,
    psam: Option<InProcess<Psam>>,
    pub lane: Option<PcscdLane>,
    pub stats: RouteStats,
}

/// The two taps of a torn purchase: the first, torn, and the one after the card came back.
#[derive(Debug, Clone)]
pub struct TornTap {
    pub torn: Tap,
    pub again: Tap,
    /// The card was pulled at DEBIT (the armed tear happened).
    pub pulled: bool,
}

fn refusal_name(reason: &Refusal) -> String {
    match reason {
        Refusal::BelowFare(_) => "balance below the fare".into(),
        Refusal::Blacklisted { blocked: true, .. } => "blacklisted (card blocked)".into(),
        Refusal::Blacklisted { blocked: false, .. } => "blacklisted".into(),
        Refusal::CardBlocked => "card blocked".into(),
        Refusal::CardNotAccepted(why) => format!("card not accepted: {why}"),
        Refusal::TerminalFault(why) => format!("terminal fault: {why}"),
        _ => "other".into(),
    }
}

impl Bus {
    pub fn open(
        spec: RouteSpec,
        directory: &Path,
        clearing: &crate::clearing::Clearing,
        base_url: &str,
        mode: Mode,
    ) -> Result<Bus, CityError> {
        let tariff = Tariff::load(&card_host::issue::fixtures::directory().join("tariffs").join(spec.tariff))
            .map_err(|error| CityError::step("load a tariff", error))?;
        let settings = BusSettings { route: spec.route, station: 1, dedup_window_seconds: DEDUP_WINDOW_SECONDS };
        let journal = fleet::journal(directory, spec.terminal.number)?;
        let validator = Validator::new(
            settings,
            tariff,
            terminal::blacklist::Blacklist::empty(),
            journal,
            Duration::from_secs(86_400),
        )
        .map_err(|error| CityError::step("start a validator", error))?;
        let device = Device::register(spec.terminal, clearing, base_url)?;
        let (psam, lane) = if mode == Mode::Pcscd && spec.route == PCSCD_ROUTE {
            (None, Some(PcscdLane::open(fleet::psam(directory, spec.terminal.number)?)?))
        } else {
            (Some(fleet::psam_reader(directory, spec.terminal.number)?), None)
        };
        Ok(Bus { spec, validator, device, psam, lane, stats: RouteStats::default() })
    }

    /// Whether this bus reads cards through pcscd.
    pub fn through_pcscd(&self) -> bool {
        self.lane.is_some()
    }

    /// Takes the blacklist its device last downloaded.
    pub fn take_blacklist(&mut self) {
        self.validator.update_blacklist(self.device.blacklist.clone());
    }

    fn count(&mut self, tap: &Tap) {
        let stats = &mut self.stats;
        match tap {
            Tap::Paid { boarding, quote, .. } => {
                match boarding {
                    Boarding::Flat => stats.flat += 1,
                    Boarding::TapIn { .. } => stats.tap_ins += 1,
                    Boarding::TapOut { .. } => stats.tap_outs += 1,
                }
                stats.paid_fen += u64::from(quote.amount.0);
                stats.concessions += u64::from(quote.concession_off != Fen::ZERO);
                stats.transfers += u64::from(quote.transfer_off != Fen::ZERO);
            }
            Tap::AlreadyPaid { .. } => stats.already_paid += 1,
            Tap::Refused { reason, .. } => *stats.refused.entry(refusal_name(reason)).or_default() += 1,
            Tap::PresentAgain { .. } => stats.present_again += 1,
            _ => {}
        }
    }

    /// `person` taps at `station` at `at`.
    pub fn tap(&mut self, person: &Person, station: u16, at: CardDateTime) -> Result<Tap, CityError> {
        self.validator.set_station(station);
        let card = person.card()?;
        let tap = match (&mut self.lane, &mut self.psam) {
            (Some(lane), _) => {
                let mut presented = lane.present(card)?;
                let tap = {
                    let (channel, psam_channel) = presented.both();
                    let mut psam = open_psam(psam_channel)?;
                    self.validator.tap(channel, &mut psam, at)
                };
                presented.remove();
                tap
            }
            (None, Some(psam_reader)) => {
                let mut reader = InProcess::new(card);
                let mut psam = open_psam(psam_reader)?;
                self.validator.tap(&mut reader, &mut psam, at)
            }
            (None, None) => unreachable!("a bus has a PSAM in-process or in the lane"),
        };
        self.count(&tap);
        Ok(tap)
    }

    /// `person` taps and the card is pulled out during DEBIT (after the card
    /// carried it out); the rider presents it again a few seconds later.
    pub fn torn_tap(&mut self, person: &Person, station: u16, at: CardDateTime) -> Result<TornTap, CityError> {
        self.validator.set_station(station);
        // Within the dedup window: the proved debit lets the rider through.
        let again_at = CardDateTime::from_unix_seconds(at.unix_seconds() + 1).expect("valid");
        let tear = Tear { apdu: DEBIT_APDU, point: TearPoint::AfterCommand };
        let card = person.card()?;
        let torn = match (&mut self.lane, &mut self.psam) {
            (Some(lane), _) => {
                let mut presented = lane.present(card)?;
                presented.tear_at(tear);
                let first = {
                    let (channel, psam_channel) = presented.both();
                    let mut psam = open_psam(psam_channel)?;
                    self.validator.tap(channel, &mut psam, at)
                };
                presented.present_again()?;
                let again = {
                    let (channel, psam_channel) = presented.both();
                    let mut psam = open_psam(psam_channel)?;
                    self.validator.tap(channel, &mut psam, again_at)
                };
                presented.remove();
                let pulled = matches!(first, Tap::PresentAgain { .. });
                TornTap { torn: first, again, pulled }
            }
            (None, Some(psam_reader)) => {
                let mut reader = Tearing::new(InProcess::new(card));
                reader.tear_at(tear);
                let first = {
                    let mut psam = open_psam(psam_reader)?;
                    self.validator.tap(&mut reader, &mut psam, at)
                };
                let pulled = reader.torn();
                reader.insert();
                let mut psam = open_psam(psam_reader)?;
                let again = self.validator.tap(&mut reader, &mut psam, again_at);
                TornTap { torn: first, again, pulled }
            }
            (None, None) => unreachable!("a bus has a PSAM in-process or in the lane"),
        };
        self.count(&torn.torn);
        self.count(&torn.again);
        Ok(torn)
    }
}

fn open_psam(channel: &mut dyn terminal::Channel) -> Result<PsamSession<'_>, CityError> {
    PsamSession::open(CardSession::new(channel)).map_err(|error| CityError::step("open the PSAM", error))
}

/// A rider's usual routes: the first leg, and the route they change to (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commute {
    pub home: usize,
    pub change_to: Option<usize>,
}

/// A leg of a journey: boarding at `from`, alighting at `to` (distance routes
/// tap out there), on route index `route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub route: usize,
    pub from: u16,
    pub to: u16,
}
