//! A card as a reader sees it: power, answer-to-reset and APDU exchange.
//!
//! The software citizen card and the software PSAM implement [`SmartCard`]; the
//! bridges that put a software card behind a reader (vpcd for pcscd, the PN532
//! emulator on a serial line) and the in-process reader drive it.

/// A contact or contactless card seen from the reader's side.
pub trait SmartCard: Send {
    /// The answer to reset the card gives at power-on and reset.
    fn atr(&self) -> Vec<u8>;

    /// The field or contacts are powered: volatile state (selected file,
    /// security status, challenge) starts afresh.
    fn power_on(&mut self);

    /// Power is removed. Anything not yet made durable is lost, as on a real card.
    fn power_off(&mut self);

    /// A warm reset: like power off then on.
    fn reset(&mut self) {
        self.power_off();
        self.power_on();
    }

    /// Processes one command APDU and returns the response APDU (data and status
    /// word). Any byte string gets a response; none makes the card panic.
    fn transmit(&mut self, command: &[u8]) -> Vec<u8>;
}
