//! How cards reach the terminals: in-process readers (with a planned tear, as a
//! card pulled from the field), and one lane through the real pcscd with the
//! vpcd reader, cards presented one at a time into slot 0 and the terminal's
//! PSAM in slot 1, every APDU counted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use card_host::SmartCard;
use card_host::card::CitizenCard;
use card_host::vpcd::{self, Bridge, Control, Tear, TearPoint};
use terminal::Channel;
use terminal::reader::pcsc::{PcscChannel, PcscReaders};
use terminal::reader::{InProcess, ReaderError};

use super::CityError;
use crate::{READER_TIMEOUT, card_reader, psam_reader, wait_for_reader};

/// An in-process reader whose card is pulled out at a planned command APDU,
/// before the card sees it or after it carried it out (as [`Control::tear_at`]
/// does through vpcd), and stays out until [`Tearing::insert`].
pub struct Tearing<C: SmartCard> {
    reader: InProcess<C>,
    sent: u32,
    tear: Option<Tear>,
    torn: bool,
}

impl<C: SmartCard> Tearing<C> {
    pub fn new(reader: InProcess<C>) -> Tearing<C> {
        Tearing { reader, sent: 0, tear: None, torn: false }
    }

    /// Arms a tear; APDUs count from the next one (1).
    pub fn tear_at(&mut self, tear: Tear) {
        (self.sent, self.tear, self.torn) = (0, Some(tear), false);
    }

    /// Puts the card back (and disarms the tear).
    pub fn insert(&mut self) {
        self.tear = None;
        self.reader.insert();
    }

    /// Whether the armed tear happened.
    pub fn torn(&self) -> bool {
        self.torn
    }

    pub fn card(&self) -> &C {
        self.reader.card()
    }

    pub fn into_card(self) -> C {
        self.reader.into_card()
    }
}

impl<C: SmartCard> Channel for Tearing<C> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.sent += 1;
        match self.tear {
            Some(tear) if tear.apdu == self.sent => {
                self.tear = None;
                self.torn = true;
                if tear.point == TearPoint::AfterCommand {
                    let _lost = self.reader.transmit(command)?;
                }
                self.reader.remove();
                Err(ReaderError::CardRemoved)
            }
            _ => self.reader.transmit(command),
        }
    }
}

/// A channel that counts the APDUs it carries.
pub struct Counting<C: Channel> {
    inner: C,
    count: Arc<AtomicU64>,
}

impl<C: Channel> Counting<C> {
    pub fn new(inner: C, count: Arc<AtomicU64>) -> Counting<C> {
        Counting { inner, count }
    }

    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C: Channel> Channel for Counting<C> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.transmit(command)
    }
}

/// The card in the vpcd slot: whichever the lane put there. An empty slot is
/// never connected (the lane removes before it swaps).
#[derive(Clone, Default)]
struct Slot(Arc<Mutex<Option<CitizenCard>>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<CitizenCard>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SmartCard for Slot {
    fn atr(&self) -> Vec<u8> {
        self.lock().as_ref().map(SmartCard::atr).unwrap_or_else(|| vec![0x3B, 0x80, 0x80, 0x01, 0x01])
    }

    fn power_on(&mut self) {
        if let Some(card) = self.lock().as_mut() {
            card.power_on();
        }
    }

    fn power_off(&mut self) {
        if let Some(card) = self.lock().as_mut() {
            card.power_off();
        }
    }

    fn transmit(&mut self, command: &[u8]) -> Vec<u8> {
        match self.lock().as_mut() {
            Some(card) => card.transmit(command),
            None => vec![0x6F, 0x00],
        }
    }
}

/// A card bridge or PSAM bridge thread of the lane.
struct Served {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn start<C: SmartCard + 'static>(card: C, port: u16) -> Result<Served, CityError> {
        let mut bridge = Bridge::new(card, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let control = bridge.control();
        let thread = std::thread::spawn(move || {
            if let Err(error) = bridge.run() {
                tracing::error!(%error, "vpcd bridge failed");
            }
        });
        if !control.wait_connected(true, READER_TIMEOUT) {
            control.stop();
            return Err(CityError::step("connect a card to vpcd", format!("port {port}: not connected")));
        }
        Ok(Served { control, thread: Some(thread) })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.control.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One terminal's readers in pcscd: its PSAM stays in slot 1 all day; riders'
/// cards are presented into slot 0 one by one, each removal lasting
/// [`vpcd::REMOVAL_TIME_MIN`] so that pcscd sees every card arrive.
pub struct PcscdLane {
    readers: PcscReaders,
    slot: Slot,
    card: Served,
    psam_channel: Counting<PcscChannel>,
    _psam: Served,
    apdus: Arc<AtomicU64>,
    presentations: u64,
}

/// A card in the lane's reader, connected.
pub struct Presented<'a> {
    lane: &'a mut PcscdLane,
    channel: Option<Counting<PcscChannel>>,
}

fn reader_error(what: &'static str) -> impl Fn(ReaderError) -> CityError {
    move |error| CityError::step(what, error)
}

impl PcscdLane {
    /// Puts `psam` into slot 1 and an empty card bridge on slot 0.
    pub fn open<P: SmartCard + 'static>(psam: P) -> Result<PcscdLane, CityError> {
        let readers = PcscReaders::establish().map_err(reader_error("PC/SC context"))?;
        let empty = |reader: &str| readers.wait_for(reader, false, READER_TIMEOUT).unwrap_or(false);
        if !empty(&card_reader()) || !empty(&psam_reader()) {
            return Err(CityError::step("take the vpcd reader", "a card is already in it (another test or demo?)"));
        }
        std::thread::sleep(vpcd::REMOVAL_TIME_MIN);
        let apdus = Arc::new(AtomicU64::new(0));
        let psam = Served::start(psam, vpcd::SLOT1_PORT)?;
        wait_for_reader(&psam_reader(), true);
        let psam_channel = readers.connect(&psam_reader(), READER_TIMEOUT).map_err(reader_error("connect the PSAM"))?;
        let slot = Slot::default();
        let card = Served::start(slot.clone(), vpcd::SLOT0_PORT)?;
        // Nothing in the slot yet: out until the first rider.
        card.control.remove();
        wait_for_reader(&card_reader(), false);
        Ok(PcscdLane {
            readers,
            slot,
            card,
            psam_channel: Counting::new(psam_channel, Arc::clone(&apdus)),
            _psam: psam,
            apdus,
            presentations: 0,
        })
    }

    /// The PSAM's channel through pcscd.
    pub fn psam(&mut self) -> &mut Counting<PcscChannel> {
        &mut self.psam_channel
    }

    /// APDUs that went through pcscd so far (cards and PSAM).
    pub fn apdus(&self) -> u64 {
        self.apdus.load(Ordering::Relaxed)
    }

    /// Cards presented so far.
    pub fn presentations(&self) -> u64 {
        self.presentations
    }

    /// Presents `card` (the reader is empty): pcscd sees it arrive, the
    /// terminal connects.
    pub fn present(&mut self, card: CitizenCard) -> Result<Presented<'_>, CityError> {
        *self.slot.lock() = Some(card);
        self.card.control.insert();
        self.presentations += 1;
        let channel = self.connect()?;
        Ok(Presented { lane: self, channel: Some(channel) })
    }

    fn connect(&self) -> Result<Counting<PcscChannel>, CityError> {
        if !self.card.control.wait_connected(true, READER_TIMEOUT) {
            return Err(CityError::step("present a card", "vpcd did not take it"));
        }
        let channel = self.readers.connect(&card_reader(), READER_TIMEOUT).map_err(reader_error("connect the card"))?;
        Ok(Counting::new(channel, Arc::clone(&self.apdus)))
    }

    /// Waits until pcscd has seen the slot empty, and the removal time more.
    fn wait_out(&self) {
        let _ = self.readers.wait_for(&card_reader(), false, READER_TIMEOUT);
        std::thread::sleep(vpcd::REMOVAL_TIME_MIN);
    }
}

impl Presented<'_> {
    pub fn channel(&mut self) -> &mut Counting<PcscChannel> {
        self.channel.as_mut().expect("connected while presented")
    }

    pub fn psam(&mut self) -> &mut Counting<PcscChannel> {
        self.lane.psam()
    }

    /// The card and the PSAM at once (a terminal's operation needs both).
    pub fn both(&mut self) -> (&mut Counting<PcscChannel>, &mut Counting<PcscChannel>) {
        (self.channel.as_mut().expect("connected while presented"), &mut self.lane.psam_channel)
    }

    /// Arms a tear of the card at its `apdu`-th command from now.
    pub fn tear_at(&self, tear: Tear) {
        self.lane.card.control.tear_at(tear);
    }

    /// The card left (a tear): the rider puts it back after the removal time.
    pub fn present_again(&mut self) -> Result<(), CityError> {
        if let Some(channel) = self.channel.take() {
            channel.into_inner().disconnect();
        }
        self.lane.wait_out();
        self.lane.card.control.insert();
        self.lane.presentations += 1;
        self.channel = Some(self.lane.connect()?);
        Ok(())
    }

    /// The rider takes the card away; the slot is empty for the next one.
    pub fn remove(mut self) -> CitizenCard {
        self.take_out()
    }

    fn take_out(&mut self) -> CitizenCard {
        if let Some(channel) = self.channel.take() {
            channel.into_inner().disconnect();
        }
        self.lane.card.control.remove();
        self.lane.wait_out();
        self.lane.slot.lock().take().expect("a presented card is in the slot")
    }
}

impl Drop for Presented<'_> {
    fn drop(&mut self) {
        if self.lane.slot.lock().is_some() {
            let _ = self.take_out();
        }
    }
}
