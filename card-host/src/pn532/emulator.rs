//! A PN532 reader module on a serial line, with software cards in its field.
//!
//! [`Pn532`] is the chip, without I/O: bytes from the host go in through
//! [`Pn532::receive`], the bytes it answers come out. [`Pn532::serve`] runs it
//! over any serial port, and [`Pty`] makes a pseudo-terminal pair whose slave
//! side a host opens like `/dev/ttyUSB0` (a symlink can name it).
//!
//! What it does on the line, as the PN532 user manual (UM0701-02) has it:
//! every valid command frame is acknowledged (`ACK`) and then answered; a frame
//! with a broken checksum or length is not acknowledged (the host times out and
//! sends it again); a `NACK` from the host gets the last answer again; a command
//! it does not know or whose parameters do not parse gets the error frame.
//! Bytes before a start code are skipped, so the HSU wake-up sequence
//! (`55 55 00 00 00 ..`) and line noise are harmless.
//!
//! The commands, and what libnfc's `pn532_uart` driver sends at start-up, are
//! in `docs/pn532.md`. A removed card makes InDataExchange answer status `01`
//! (time out, the target has not answered), as a real PN532 does when the card
//! has left the field.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::command::{
    self, ATS_LENGTH_MAX, BAUD_TYPE_A_106, DATA_EXCHANGE_CHUNK_MAX, MORE_INFORMATION, PARAMETER_AUTOMATIC_RATS,
    PARAMETERS_DEFAULT, SAK_ISO14443_4, Status, TARGETS_MAX, TypeATarget, UID_LENGTH_MAX, code,
};
use super::frame::{self, Decoder, Direction, Frame, Information};
use crate::icc::SmartCard;
use crate::vpcd::{Tear, TearPoint};

/// The firmware version the emulator reports: IC PN532, version 1.6, support
/// ISO/IEC 14443 type A, type B and ISO 18092 (GetFirmwareVersion's `Support`).
pub const FIRMWARE_VERSION: [u8; 4] = [0x32, 0x01, 0x06, 0x07];
/// The longest command APDU assembled from chained InDataExchange frames.
pub const COMMAND_APDU_LENGTH_MAX: usize = crate::apdu::COMMAND_LENGTH_MAX;
/// Cards one emulated field holds.
pub const CARDS_MAX: usize = 4;
/// How long one read of the serial port waits before the loop looks at its
/// control again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes read from the serial port at once.
const READ_CHUNK: usize = 512;

/// ATQA (SENS_RES) as the PN532 reports it for a single-size (4-byte) UID.
const ATQA_SINGLE: [u8; 2] = [0x00, 0x04];
/// ATQA for a double-size (7-byte) UID.
const ATQA_DOUBLE: [u8; 2] = [0x00, 0x44];
/// ATS T0: TA(1), TB(1), TC(1) present; FSCI 8 (the card takes 256-byte frames).
const ATS_T0: u8 = 0x78;
/// ATS TA(1): 106 kbit/s only, same divisor both ways.
const ATS_TA: u8 = 0x80;
/// ATS TB(1): FWI 8 (77 ms), SFGI 1.
const ATS_TB: u8 = 0x81;
/// ATS TC(1): CID supported, NAD not.
const ATS_TC: u8 = 0x02;

/// Why the emulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    #[error("serial line: {0}")]
    Io(#[from] io::Error),
    #[error("pseudo-terminal: {0}")]
    Pty(#[from] serialport::Error),
    #[error("the pseudo-terminal has no device name")]
    NoDeviceName,
    #[error("{path}: {source}")]
    Link { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a link this emulator made")]
    LinkInTheWay { path: PathBuf },
    #[error("a UID is 4, 7 or 10 bytes, not {0}")]
    UidLength(usize),
    #[error("an emulated field holds 1 to {CARDS_MAX} cards, not {0}")]
    CardCount(usize),
}

/// A card's UID (NFCID1): 4, 7 or 10 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uid(Vec<u8>);

impl Uid {
    pub fn new(bytes: &[u8]) -> Result<Uid, EmulatorError> {
        match bytes.len() {
            4 | 7 | 10 => Ok(Uid(bytes.to_vec())),
            other => Err(EmulatorError::UidLength(other)),
        }
    }

    /// A single-size random UID (first byte `08`, ISO/IEC 14443-3) from 3 bytes.
    pub fn random_single(bytes: [u8; 3]) -> Uid {
        Uid(vec![0x08, bytes[0], bytes[1], bytes[2]])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The historical bytes of an ATR (ISO/IEC 7816-3 §8.2), or none when the ATR
/// does not parse.
pub fn historical_bytes(atr: &[u8]) -> &[u8] {
    let Some(&t0) = atr.get(1) else {
        return &[];
    };
    let count = usize::from(t0 & 0x0F);
    let mut indicator = t0;
    let mut at = 2;
    // At most 4 interface byte groups are meaningful; the limit bounds the loop.
    for _ in 0..8 {
        let present = (indicator >> 4).count_ones() as usize;
        let has_next = indicator & 0x80 != 0;
        at += present;
        if !has_next {
            break;
        }
        let Some(&next) = atr.get(at - 1) else {
            return &[];
        };
        indicator = next;
    }
    atr.get(at..at + count).unwrap_or(&[])
}

/// The ATS the emulator sends for a card: fixed interface bytes and the
/// historical bytes of the card's ATR.
fn ats_for(card: &dyn SmartCard) -> Vec<u8> {
    let atr = card.atr();
    let historical = historical_bytes(&atr);
    let historical = &historical[..historical.len().min(ATS_LENGTH_MAX - 5)];
    let mut ats = vec![(5 + historical.len()) as u8, ATS_T0, ATS_TA, ATS_TB, ATS_TC];
    ats.extend_from_slice(historical);
    ats
}

#[derive(Debug)]
struct ControlState {
    /// Whether each card is in the field.
    present: Vec<bool>,
    stopping: bool,
    /// The armed tear and the command APDUs seen since it was armed.
    tear: Option<(Tear, u32)>,
    /// Command APDUs the cards have been sent (complete, after chaining).
    apdus: u64,
    /// The armed lost answer (the APDU it falls on, counted from when it was
    /// armed) and the APDUs seen since.
    lose_answer: Option<(u32, u32)>,
    /// The InDataExchange just executed carried the APDU whose answer is lost.
    losing: bool,
}

/// Remote control of a running emulator: take cards out of the field, put them
/// back, tear at a chosen APDU, stop. Shared between threads.
#[derive(Debug)]
pub struct Control {
    state: Mutex<ControlState>,
}

impl Control {
    fn new(cards: usize) -> Self {
        Control {
            state: Mutex::new(ControlState {
                present: vec![true; cards],
                stopping: false,
                tear: None,
                apdus: 0,
                lose_answer: None,
                losing: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes every card out of the field.
    pub fn remove(&self) {
        self.lock().present.iter_mut().for_each(|present| *present = false);
    }

    /// Puts every card (back) into the field.
    pub fn insert(&self) {
        self.lock().present.iter_mut().for_each(|present| *present = true);
    }

    /// Takes card `index` out of the field (or puts it back).
    pub fn set_present(&self, index: usize, present: bool) {
        if let Some(slot) = self.lock().present.get_mut(index) {
            *slot = present;
        }
    }

    /// Arms a tear; it applies once, counting command APDUs from now on. After
    /// it, every card is out of the field until [`Control::insert`].
    pub fn tear_at(&self, tear: Tear) {
        self.lock().tear = Some((tear, 0));
    }

    /// Arms a lost answer, once: the `apdu`-th command APDU from now (1-based)
    /// is carried out by its card, but the PN532's ACK and answer to that
    /// InDataExchange never reach the host, as when the line fails. The card
    /// stays in the field.
    pub fn lose_answer_at(&self, apdu: u32) {
        self.lock().lose_answer = Some((apdu, 0));
    }

    /// Whether the InDataExchange just executed lost its answer (and clears it).
    fn take_losing(&self) -> bool {
        std::mem::take(&mut self.lock().losing)
    }

    /// Makes [`Pn532::serve`] return.
    pub fn stop(&self) {
        self.lock().stopping = true;
    }

    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    /// Command APDUs delivered to the cards so far.
    pub fn apdus(&self) -> u64 {
        self.lock().apdus
    }

    /// Counts one command APDU; takes the tear if it falls on this one.
    fn count_apdu(&self) -> Option<TearPoint> {
        let mut state = self.lock();
        state.apdus += 1;
        if let Some((apdu, seen)) = state.lose_answer.as_mut() {
            *seen += 1;
            if *seen >= *apdu {
                state.lose_answer = None;
                state.losing = true;
            }
        }
        let (tear, seen) = state.tear.as_mut()?;
        *seen += 1;
        if *seen < tear.apdu {
            return None;
        }
        let point = tear.point;
        state.tear = None;
        state.present.iter_mut().for_each(|present| *present = false);
        Some(point)
    }

    fn presence(&self) -> Vec<bool> {
        self.lock().present.clone()
    }
}

/// A card in the emulated field.
struct CardInField<C> {
    card: C,
    uid: Uid,
    /// Powered by the field (present and the field on).
    powered: bool,
}

/// A target the last InListPassiveTarget (or InAutoPoll) activated.
#[derive(Debug, Clone, Copy)]
struct Active {
    number: u8,
    card: usize,
    /// False after InDeselect until InSelect.
    selected: bool,
}

/// What a command gets back.
enum Answer {
    /// A response frame with these parameters after the response code.
    Response(Vec<u8>),
    /// The error frame: a syntax error at the application level.
    SyntaxError,
}

/// An emulated PN532 with software cards in its field. See the module doc.
pub struct Pn532<C: SmartCard> {
    cards: Vec<CardInField<C>>,
    control: Arc<Control>,
    decoder: Decoder,
    /// The last answer frame, for a NACK.
    last_answer: Option<Vec<u8>>,
    registers: Vec<u8>,
    parameters: u8,
    sam_mode: u8,
    field_on: bool,
    active: Vec<Active>,
    /// A command APDU arriving in chained InDataExchange frames.
    command: Vec<u8>,
    /// The rest of a response APDU to send in chained answers.
    response: Vec<u8>,
    chunk_max: usize,
}

impl<C: SmartCard> Pn532<C> {
    /// A PN532 with one card in its field.
    pub fn new(card: C, uid: Uid) -> Self {
        Pn532::build(vec![(card, uid)])
    }

    /// A PN532 with several cards in its field (at most [`CARDS_MAX`]).
    pub fn with_cards(cards: Vec<(C, Uid)>) -> Result<Self, EmulatorError> {
        if cards.is_empty() || cards.len() > CARDS_MAX {
            return Err(EmulatorError::CardCount(cards.len()));
        }
        Ok(Pn532::build(cards))
    }

    fn build(cards: Vec<(C, Uid)>) -> Self {
        let control = Arc::new(Control::new(cards.len()));
        Pn532 {
            cards: cards.into_iter().map(|(card, uid)| CardInField { card, uid, powered: false }).collect(),
            control,
            decoder: Decoder::new(),
            last_answer: None,
            registers: vec![0; usize::from(u16::MAX) + 1],
            parameters: PARAMETERS_DEFAULT,
            sam_mode: command::SAM_MODE_NORMAL,
            field_on: false,
            active: Vec::new(),
            command: Vec::new(),
            response: Vec::new(),
            chunk_max: DATA_EXCHANGE_CHUNK_MAX,
        }
    }

    /// Sends response APDUs in InDataExchange answers of at most `chunk_max`
    /// bytes (1 to [`DATA_EXCHANGE_CHUNK_MAX`]), chaining with MI: to test a
    /// host's chaining with short APDUs.
    pub fn with_chunk_max(mut self, chunk_max: usize) -> Self {
        self.chunk_max = chunk_max.clamp(1, DATA_EXCHANGE_CHUNK_MAX);
        self
    }

    /// The handle that removes, inserts, tears and stops.
    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    pub fn card(&self, index: usize) -> Option<&C> {
        self.cards.get(index).map(|slot| &slot.card)
    }

    pub fn into_cards(self) -> Vec<C> {
        self.cards.into_iter().map(|slot| slot.card).collect()
    }

    /// Takes bytes from the host; returns the bytes to send back.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.decoder.push(bytes);
        let mut out = Vec::new();
        while let Some(outcome) = self.decoder.next_frame() {
            match outcome {
                Ok(Frame::Information(information)) if information.direction() == Direction::HostToPn532 => {
                    let acknowledged = out.len();
                    out.extend_from_slice(&frame::ACK);
                    let answer = self.execute(information.code(), information.parameters());
                    let bytes = match answer {
                        Answer::Response(parameters) => match Information::response(information.code(), &parameters) {
                            Ok(response) => response.to_bytes(),
                            Err(error) => {
                                tracing::error!(%error, "answer does not fit a frame");
                                frame::ERROR.to_vec()
                            }
                        },
                        Answer::SyntaxError => frame::ERROR.to_vec(),
                    };
                    out.extend_from_slice(&bytes);
                    self.last_answer = Some(bytes);
                    if self.control.take_losing() {
                        tracing::info!("planned line fault: the answer to this APDU is lost");
                        out.truncate(acknowledged);
                    }
                }
                Ok(Frame::Nack) => {
                    tracing::debug!("NACK from the host: sending the last answer again");
                    if let Some(last) = &self.last_answer {
                        out.extend_from_slice(last);
                    }
                }
                Ok(Frame::Ack) => tracing::debug!("ACK from the host (abort): nothing is running"),
                Ok(other) => tracing::warn!(frame = ?other, "frame not meant for a PN532 ignored"),
                Err(error) => tracing::warn!(%error, "broken frame from the host ignored (not acknowledged)"),
            }
        }
        out
    }

    /// Brings the cards' power in line with the control and the RF field.
    fn sync_field(&mut self) {
        let presence = self.control.presence();
        for (index, slot) in self.cards.iter_mut().enumerate() {
            let powered = self.field_on && presence.get(index).copied().unwrap_or(false);
            if powered != slot.powered {
                if powered {
                    slot.card.power_on();
                } else {
                    slot.card.power_off();
                    tracing::info!(card = index, "card left the field");
                }
                slot.powered = powered;
            }
        }
    }

    fn set_field(&mut self, on: bool) {
        if self.field_on && !on {
            self.active.clear();
        }
        self.field_on = on;
        self.sync_field();
    }

    fn execute(&mut self, command: u8, parameters: &[u8]) -> Answer {
        use Answer::{Response, SyntaxError};
        self.sync_field();
        // The length only: InDataExchange's parameters are an APDU (a VERIFY's PIN).
        tracing::trace!(command = format_args!("{command:02X}"), parameters = parameters.len(), "command");
        match command {
            code::DIAGNOSE => match parameters.split_first() {
                None => SyntaxError,
                Some((0x00, _)) => Response(parameters.to_vec()),
                Some((0x06, _)) => {
                    let present = self.active.iter().any(|target| self.cards[target.card].powered);
                    Response(vec![if present { 0x00 } else { Status::Timeout.code() }])
                }
                Some(_) => Response(vec![0x00]),
            },
            code::GET_FIRMWARE_VERSION => Response(FIRMWARE_VERSION.to_vec()),
            code::GET_GENERAL_STATUS => {
                let mut answer = vec![0x00, u8::from(self.field_on), self.active.len() as u8];
                for target in &self.active {
                    answer.extend_from_slice(&[target.number, 0x00, 0x00, 0x00]);
                }
                answer.push(0x00);
                Response(answer)
            }
            code::READ_REGISTER => {
                if parameters.is_empty() || !parameters.len().is_multiple_of(2) {
                    return SyntaxError;
                }
                let values = parameters
                    .chunks_exact(2)
                    .map(|pair| self.registers[usize::from(u16::from_be_bytes([pair[0], pair[1]]))])
                    .collect();
                Response(values)
            }
            code::WRITE_REGISTER => {
                if parameters.is_empty() || !parameters.len().is_multiple_of(3) {
                    return SyntaxError;
                }
                for triple in parameters.chunks_exact(3) {
                    self.registers[usize::from(u16::from_be_bytes([triple[0], triple[1]]))] = triple[2];
                }
                Response(Vec::new())
            }
            code::READ_GPIO => Response(vec![0xFF, 0xFF, 0x00]),
            code::WRITE_GPIO | code::SET_SERIAL_BAUD_RATE | code::RF_REGULATION_TEST => Response(Vec::new()),
            code::SET_PARAMETERS => match parameters {
                [flags] => {
                    self.parameters = *flags;
                    Response(Vec::new())
                }
                _ => SyntaxError,
            },
            code::SAM_CONFIGURATION => match parameters {
                [mode @ 0x01..=0x04, ..] if parameters.len() <= 3 => {
                    self.sam_mode = *mode;
                    Response(Vec::new())
                }
                _ => SyntaxError,
            },
            code::POWER_DOWN => Response(vec![Status::Ok.code()]),
            code::RF_CONFIGURATION => match parameters {
                [0x01, field, ..] => {
                    self.set_field(field & 0x01 != 0);
                    Response(Vec::new())
                }
                [_, ..] => Response(Vec::new()),
                [] => SyntaxError,
            },
            code::IN_LIST_PASSIVE_TARGET => self.list_passive_target(parameters),
            code::IN_AUTO_POLL => self.auto_poll(parameters),
            code::IN_DATA_EXCHANGE => match parameters.split_first() {
                None => SyntaxError,
                Some((&target, data)) => Response(self.data_exchange(target, data)),
            },
            code::IN_DESELECT | code::IN_RELEASE | code::IN_SELECT => match parameters {
                [target] => Response(vec![self.target_state(command, *target).code()]),
                _ => SyntaxError,
            },
            // No raw (ISO 14443-3) or DEP target here: the emulated cards speak
            // ISO 14443-4 through InDataExchange only, so these time out.
            code::IN_COMMUNICATE_THRU | code::IN_JUMP_FOR_DEP | code::IN_JUMP_FOR_PSL | code::IN_ATR | code::IN_PSL => {
                Response(vec![Status::Timeout.code()])
            }
            other => {
                tracing::warn!(command = format_args!("{other:02X}"), "command not emulated: error frame");
                SyntaxError
            }
        }
    }

    /// Activates up to `limit` cards in the field as type A targets, the card
    /// with `uid` only when one is given.
    fn activate(&mut self, limit: usize, uid: Option<&[u8]>) -> Vec<TypeATarget> {
        self.active.clear();
        self.command.clear();
        self.response.clear();
        self.set_field(true);
        let mut targets = Vec::new();
        for index in 0..self.cards.len() {
            if targets.len() >= limit {
                break;
            }
            let slot = &mut self.cards[index];
            if !slot.powered || uid.is_some_and(|uid| uid != slot.uid.as_bytes()) {
                continue;
            }
            // WUPA, anticollision, SELECT, RATS: a fresh ISO 14443-4 session.
            slot.card.reset();
            let number = targets.len() as u8 + 1;
            let uid = slot.uid.as_bytes().to_vec();
            let atqa = if uid.len() == 4 { ATQA_SINGLE } else { ATQA_DOUBLE };
            let rats = self.parameters & PARAMETER_AUTOMATIC_RATS != 0;
            let ats = if rats { ats_for(&slot.card) } else { Vec::new() };
            self.active.push(Active { number, card: index, selected: true });
            targets.push(TypeATarget { number, atqa, sak: SAK_ISO14443_4, uid, ats });
        }
        tracing::debug!(targets = targets.len(), "targets activated");
        targets
    }

    fn list_passive_target(&mut self, parameters: &[u8]) -> Answer {
        let [max_targets, baud_type, initiator @ ..] = parameters else {
            return Answer::SyntaxError;
        };
        if *max_targets == 0 || *max_targets > TARGETS_MAX {
            return Answer::SyntaxError;
        }
        match *baud_type {
            BAUD_TYPE_A_106 => {
                if initiator.len() > UID_LENGTH_MAX + 2 {
                    return Answer::SyntaxError;
                }
                let uid = (!initiator.is_empty()).then(|| uncascade(initiator));
                let targets = self.activate(usize::from(*max_targets), uid.as_deref());
                let mut answer = vec![targets.len() as u8];
                for target in &targets {
                    answer.extend(target.to_bytes());
                }
                Answer::Response(answer)
            }
            // FeliCa 212/424, type B, Jewel, and the PN533's other type B rates:
            // no such card in this field.
            0x01..=0x04 | 0x06..=0x08 => {
                self.active.clear();
                Answer::Response(vec![0x00])
            }
            _ => Answer::SyntaxError,
        }
    }

    /// InAutoPoll: PollNr, Period, then target types. Answers the first card as
    /// a type A target when type A (generic `00`, MIFARE `10`, ISO 14443-4A `20`)
    /// is asked for.
    fn auto_poll(&mut self, parameters: &[u8]) -> Answer {
        let [_poll_count, _period, types @ ..] = parameters else {
            return Answer::SyntaxError;
        };
        if types.is_empty() || types.len() > 15 {
            return Answer::SyntaxError;
        }
        let Some(&kind) = types.iter().find(|kind| matches!(kind, 0x00 | 0x10 | 0x20)) else {
            return Answer::Response(vec![0x00]);
        };
        let targets = self.activate(1, None);
        let mut answer = vec![targets.len() as u8];
        for target in &targets {
            let data = target.to_bytes();
            answer.extend_from_slice(&[kind, data.len() as u8]);
            answer.extend(data);
        }
        Answer::Response(answer)
    }

    /// InDeselect, InRelease, InSelect on target `number` (0: all, for the first two).
    fn target_state(&mut self, command: u8, number: u8) -> Status {
        let known = number == 0 || self.active.iter().any(|target| target.number == number);
        if !known || (command == code::IN_SELECT && number == 0) {
            return Status::NotAcceptable;
        }
        self.command.clear();
        self.response.clear();
        let matches = |target: &Active| number == 0 || target.number == number;
        match command {
            code::IN_RELEASE => self.active.retain(|target| !matches(target)),
            code::IN_DESELECT => {
                self.active.iter_mut().filter(|target| matches(target)).for_each(|t| t.selected = false)
            }
            _ => {
                for target in self.active.iter_mut().filter(|target| matches(target)) {
                    if !target.selected {
                        target.selected = true;
                        self.cards[target.card].card.reset();
                    }
                }
            }
        }
        Status::Ok
    }

    /// InDataExchange: the status byte, then data.
    fn data_exchange(&mut self, target_byte: u8, data: &[u8]) -> Vec<u8> {
        let number = target_byte & !MORE_INFORMATION;
        let more = target_byte & MORE_INFORMATION != 0;
        let Some(target) = self.active.iter().find(|target| target.number == number).copied() else {
            return vec![Status::NotAcceptable.code()];
        };
        if !target.selected {
            return vec![Status::NotAcceptable.code()];
        }
        if !self.cards[target.card].powered {
            self.command.clear();
            self.response.clear();
            return vec![Status::Timeout.code()];
        }
        if more {
            self.response.clear();
            if self.command.len() + data.len() > COMMAND_APDU_LENGTH_MAX {
                self.command.clear();
                return vec![Status::InvalidFrame.code()];
            }
            self.command.extend_from_slice(data);
            return vec![Status::Ok.code()];
        }
        if data.is_empty() && self.command.is_empty() && !self.response.is_empty() {
            return self.next_response_chunk();
        }
        if !self.response.is_empty() {
            tracing::warn!(left = self.response.len(), "new command before the chained answer was fetched");
            self.response.clear();
        }
        let mut apdu = std::mem::take(&mut self.command);
        if apdu.len() + data.len() > COMMAND_APDU_LENGTH_MAX {
            return vec![Status::InvalidFrame.code()];
        }
        apdu.extend_from_slice(data);
        let slot = &mut self.cards[target.card];
        match self.control.count_apdu() {
            Some(TearPoint::BeforeCommand) => {
                tracing::info!("planned tear: card pulled before the command");
                self.sync_field();
                return vec![Status::Timeout.code()];
            }
            Some(TearPoint::AfterCommand) => {
                let _ = slot.card.transmit(&apdu);
                tracing::info!("planned tear: card pulled after the command, before its answer");
                self.sync_field();
                return vec![Status::Timeout.code()];
            }
            None => {}
        }
        self.response = slot.card.transmit(&apdu);
        self.next_response_chunk()
    }

    fn next_response_chunk(&mut self) -> Vec<u8> {
        let take = self.response.len().min(self.chunk_max);
        let rest = self.response.split_off(take);
        let chunk = std::mem::replace(&mut self.response, rest);
        let status = if self.response.is_empty() { 0x00 } else { MORE_INFORMATION };
        let mut answer = Vec::with_capacity(1 + chunk.len());
        answer.push(status);
        answer.extend(chunk);
        answer
    }

    /// Serves the host on `port` until [`Control::stop`]. The port's reads must
    /// time out (a serial port's timeout, [`POLL_INTERVAL`] or so) so that the
    /// loop sees the control.
    pub fn serve<P: Read + Write>(&mut self, port: &mut P) -> Result<(), EmulatorError> {
        let mut buffer = [0u8; READ_CHUNK];
        while !self.control.is_stopping() {
            let count = match port.read(&mut buffer) {
                Ok(0) => {
                    std::thread::sleep(POLL_INTERVAL);
                    continue;
                }
                Ok(count) => count,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let answer = self.receive(&buffer[..count]);
            if answer.is_empty() {
                continue;
            }
            match port.write_all(&answer) {
                Ok(()) => {}
                // A host that stopped reading (the pty's queue is full): its
                // answer is lost, as on a real line; the next host starts afresh.
                Err(error) if matches!(error.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                    tracing::warn!("the host is not reading: answer dropped");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// The UID in InListPassiveTarget's initiator data: cascade tags (`88`) removed.
fn uncascade(initiator: &[u8]) -> Vec<u8> {
    match initiator {
        [0x88, a, b, c, rest @ ..] if rest.len() == 4 => [&[*a, *b, *c][..], rest].concat(),
        [0x88, a, b, c, 0x88, d, e, f, rest @ ..] if rest.len() == 4 => [&[*a, *b, *c, *d, *e, *f][..], rest].concat(),
        other => other.to_vec(),
    }
}

/// A pseudo-terminal pair: the emulator holds the master side, a host opens the
/// slave device (optionally through a symlink, removed on drop).
pub struct Pty {
    master: serialport::TTYPort,
    /// Kept open so the master never sees a hang-up between two hosts.
    slave: serialport::TTYPort,
    device: PathBuf,
    link: Option<PathBuf>,
}

impl Pty {
    /// Opens a pair; with `link`, makes it a symlink to the slave device (an
    /// existing symlink there is replaced, anything else is an error).
    pub fn open(link: Option<&Path>) -> Result<Pty, EmulatorError> {
        // No set_exclusive here: serialport takes an flock for it, and a host
        // opening the slave device (serialport's exclusive open) must get its own.
        let (mut master, slave) = serialport::TTYPort::pair()?;
        serialport::SerialPort::set_timeout(&mut master, POLL_INTERVAL)?;
        let device = PathBuf::from(serialport::SerialPort::name(&slave).ok_or(EmulatorError::NoDeviceName)?);
        let link = match link {
            None => None,
            Some(path) => {
                if let Ok(metadata) = std::fs::symlink_metadata(path) {
                    if !metadata.file_type().is_symlink() {
                        return Err(EmulatorError::LinkInTheWay { path: path.to_owned() });
                    }
                    std::fs::remove_file(path)
                        .map_err(|source| EmulatorError::Link { path: path.to_owned(), source })?;
                }
                std::os::unix::fs::symlink(&device, path)
                    .map_err(|source| EmulatorError::Link { path: path.to_owned(), source })?;
                Some(path.to_owned())
            }
        };
        tracing::info!(device = %device.display(), link = ?link, "PN532 emulator on a pseudo-terminal");
        Ok(Pty { master, slave, device, link })
    }

    /// The slave device a host opens (`/dev/pts/N`).
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The emulator's side.
    pub fn master(&mut self) -> &mut serialport::TTYPort {
        &mut self.master
    }

    /// Another handle on the host's side, for a host in this process.
    pub fn host_port(&self) -> Result<serialport::TTYPort, EmulatorError> {
        Ok(self.slave.try_clone_native()?)
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            let ours = std::fs::read_link(link).is_ok_and(|target| target == self.device);
            if ours && let Err(error) = std::fs::remove_file(link) {
                tracing::warn!(link = %link.display(), %error, "could not remove the link");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl SmartCard for Echo {
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x82, 0x80, 0x01, 0xAB, 0xCD, 0x00]
        }
        fn power_on(&mut self) {}
        fn power_off(&mut self) {}
        fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
            let mut answer = command.to_vec();
            answer.extend_from_slice(&[0x90, 0x00]);
            answer
        }
    }

    fn command(code: u8, parameters: &[u8]) -> Vec<u8> {
        Information::command(code, parameters).expect("fits").to_bytes()
    }

    /// Sends one command; checks the ACK; returns the answer's parameters.
    fn ask(chip: &mut Pn532<Echo>, code: u8, parameters: &[u8]) -> Result<Vec<u8>, ()> {
        let out = chip.receive(&command(code, parameters));
        assert_eq!(out[..6], frame::ACK);
        match frame::parse(&out[6..]).expect("one answer frame") {
            Frame::Information(answer) => {
                assert_eq!(answer.code(), code + 1);
                Ok(answer.parameters().to_vec())
            }
            Frame::Error => Err(()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn historical_bytes_of_atrs() {
        assert_eq!(historical_bytes(&[0x3B, 0x82, 0x80, 0x01, 0xAB, 0xCD, 0x00]), [0xAB, 0xCD]);
        assert_eq!(historical_bytes(&[0x3B, 0x02, 0x14, 0x50]), [0x14, 0x50]);
        assert_eq!(historical_bytes(&[0x3B, 0x92, 0x11, 0x81, 0x31, 0xFE, 0x45, 0x01, 0x02]), [0x01, 0x02]);
        assert!(historical_bytes(&[]).is_empty());
        assert!(historical_bytes(&[0x3B, 0xFF]).is_empty());
    }

    #[test]
    fn libnfc_start_up_sequence_is_answered() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3]));
        // Wake-up bytes, then SAMConfiguration normal mode, in one write.
        let mut line = vec![0x55, 0x55, 0x00, 0x00, 0x00];
        line.extend(command(code::SAM_CONFIGURATION, &[0x01]));
        let out = chip.receive(&line);
        assert_eq!(out, [&frame::ACK[..], &[0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD5, 0x15, 0x16, 0x00]].concat());
        assert_eq!(ask(&mut chip, code::DIAGNOSE, b"\x00libnfc"), Ok(b"\x00libnfc".to_vec()));
        assert_eq!(ask(&mut chip, code::GET_FIRMWARE_VERSION, &[]), Ok(FIRMWARE_VERSION.to_vec()));
        assert_eq!(ask(&mut chip, code::SET_PARAMETERS, &[0x14]), Ok(vec![]));
        assert_eq!(ask(&mut chip, code::WRITE_REGISTER, &[0x63, 0x3D, 0x07, 0x63, 0x02, 0x80]), Ok(vec![]));
        assert_eq!(ask(&mut chip, code::READ_REGISTER, &[0x63, 0x3D, 0x63, 0x02, 0x63, 0x03]), Ok(vec![0x07, 0x80, 0]));
        assert_eq!(ask(&mut chip, code::RF_CONFIGURATION, &[0x01, 0x00]), Ok(vec![]));
        assert_eq!(ask(&mut chip, code::RF_CONFIGURATION, &[0x05, 0xFF, 0x01, 0x02]), Ok(vec![]));
        // Other modulations find nothing; the raw-frame probes time out.
        assert_eq!(
            ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x01, 0x00, 0xFF, 0xFF, 0x00, 0x00]),
            Ok(vec![0])
        );
        assert_eq!(ask(&mut chip, code::IN_COMMUNICATE_THRU, &[0x06, 0x00]), Ok(vec![0x01]));
        assert_eq!(ask(&mut chip, code::TG_INIT_AS_TARGET, &[0x00]), Err(()));
        assert_eq!(ask(&mut chip, 0xEE, &[]), Err(()), "unknown command: error frame");
        assert_eq!(ask(&mut chip, code::READ_REGISTER, &[0x63]), Err(()), "bad parameters: error frame");
    }

    #[test]
    fn a_card_is_listed_with_ats_and_exchanges_apdus() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3]));
        let answer = ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("answer");
        let targets = TypeATarget::parse_list(&answer, true).expect("parses");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].uid, [0x08, 1, 2, 3]);
        assert_eq!(targets[0].ats, [0x07, 0x78, 0x80, 0x81, 0x02, 0xAB, 0xCD]);
        assert_eq!(
            ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0x00, 0x84, 0x00, 0x00, 0x04]),
            Ok(vec![0x00, 0x00, 0x84, 0x00, 0x00, 0x04, 0x90, 0x00])
        );
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x02, 0x00]), Ok(vec![0x27]), "no target 2");
        // Only the card with the given UID.
        assert_eq!(ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00, 0x08, 9, 9, 9]), Ok(vec![0]));
        assert_eq!(ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00, 0x08, 1, 2, 3]).expect("found")[0], 1);
        // Deselect, then select again; release forgets the target.
        assert_eq!(ask(&mut chip, code::IN_DESELECT, &[0x00]), Ok(vec![0x00]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0x00]), Ok(vec![0x27]));
        assert_eq!(ask(&mut chip, code::IN_SELECT, &[0x01]), Ok(vec![0x00]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0xAA, 0xBB]), Ok(vec![0x00, 0xAA, 0xBB, 0x90, 0x00]));
        assert_eq!(ask(&mut chip, code::IN_RELEASE, &[0x00]), Ok(vec![0x00]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0xAA]), Ok(vec![0x27]));
        // Automatic RATS off: no ATS.
        assert_eq!(ask(&mut chip, code::SET_PARAMETERS, &[0x04]), Ok(vec![]));
        let answer = ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("answer");
        assert!(TypeATarget::parse_list(&answer, false).expect("parses")[0].ats.is_empty());
    }

    #[test]
    fn chaining_both_ways() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3])).with_chunk_max(4);
        ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("listed");
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x41, 1, 2, 3]), Ok(vec![0x00]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x41, 4, 5]), Ok(vec![0x00]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 6]), Ok(vec![0x40, 1, 2, 3, 4]));
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01]), Ok(vec![0x00, 5, 6, 0x90, 0x00]));
    }

    #[test]
    fn nack_repeats_and_broken_frames_get_no_ack() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3]));
        let first = chip.receive(&command(code::GET_FIRMWARE_VERSION, &[]));
        assert_eq!(chip.receive(&frame::NACK), first[6..]);
        let mut broken = command(code::GET_FIRMWARE_VERSION, &[]);
        broken[6] ^= 0x01;
        assert!(chip.receive(&broken).is_empty());
        assert!(chip.receive(&[0x13, 0x37, 0xFF, 0x00]).is_empty(), "noise");
        assert_eq!(chip.receive(&command(code::GET_FIRMWARE_VERSION, &[])), first, "resynchronised");
        assert!(chip.receive(&frame::ACK).is_empty());
    }

    #[test]
    fn a_lost_answer_is_carried_out_and_never_sent() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3])).with_chunk_max(4);
        let control = chip.control();
        ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("listed");
        control.lose_answer_at(2);
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0xAA]), Ok(vec![0x00, 0xAA, 0x90, 0x00]));
        // A chained part is no APDU yet; the APDU it completes loses its answer (no ACK either).
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x41, 1, 2]), Ok(vec![0x00]));
        assert!(chip.receive(&command(code::IN_DATA_EXCHANGE, &[0x01, 3])).is_empty(), "nothing on the line");
        assert_eq!(control.apdus(), 2, "the card carried it out");
        // Once: the next APDU is answered, and the card is still in the field.
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0xBB]), Ok(vec![0x00, 0xBB, 0x90, 0x00]));
        assert_eq!(ask(&mut chip, code::DIAGNOSE, &[0x06]), Ok(vec![0x00]));
    }

    use crate::logs::captured as logs_of;

    #[test]
    fn apdu_data_never_reaches_the_log() {
        let mut chip = Pn532::new(Echo, Uid::random_single([1, 2, 3]));
        let verify = [0x01, 0x00, 0x20, 0x00, 0x00, 0x06, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36];
        let logs = logs_of(|| {
            ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("listed");
            ask(&mut chip, code::IN_DATA_EXCHANGE, &verify).expect("answered");
            // A frame the host should not send (PN532 → host direction) is logged, without its data.
            let stray = Information::response(code::IN_DATA_EXCHANGE, &verify).expect("fits").to_bytes();
            assert!(chip.receive(&stray).is_empty());
        });
        assert!(logs.contains("command") && logs.contains("frame not meant for a PN532"), "{logs}");
        for secret in ["313233343536", "31 32 33", "123456"] {
            assert!(!logs.contains(secret), "the PIN in the log: {logs}");
        }
    }

    #[test]
    fn removal_and_two_cards() {
        let mut chip =
            Pn532::with_cards(vec![(Echo, Uid::random_single([1, 1, 1])), (Echo, Uid::random_single([2, 2, 2]))])
                .expect("two cards");
        let control = chip.control();
        let answer = ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]).expect("answer");
        assert_eq!(TypeATarget::parse_list(&answer, true).expect("parses").len(), 2);
        let answer = ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x01, 0x00]).expect("answer");
        assert_eq!(TypeATarget::parse_list(&answer, true).expect("parses").len(), 1, "MaxTg 1: one of them");
        control.set_present(0, false);
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0x00, 0xB0]), Ok(vec![0x01]), "card gone: timeout");
        assert_eq!(ask(&mut chip, code::DIAGNOSE, &[0x06]), Ok(vec![0x01]));
        let answer = ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]).expect("answer");
        assert_eq!(TypeATarget::parse_list(&answer, true).expect("parses")[0].uid, [8, 2, 2, 2]);
        control.tear_at(Tear { apdu: 2, point: TearPoint::AfterCommand });
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0x00, 0xB0]).expect("answer")[0], 0x00);
        assert_eq!(ask(&mut chip, code::IN_DATA_EXCHANGE, &[0x01, 0x00, 0xB0]), Ok(vec![0x01]), "torn");
        assert_eq!(ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]), Ok(vec![0x00]), "field empty");
        control.insert();
        assert_eq!(ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x02, 0x00]).expect("both back")[0], 2);
        assert_eq!(ask(&mut chip, code::IN_LIST_PASSIVE_TARGET, &[0x03, 0x00]), Err(()), "MaxTg 3");
        assert_eq!(control.apdus(), 2, "the exchange with a card gone reached no card");
    }
}
