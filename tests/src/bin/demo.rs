//! The end-to-end demo on the embedded defaults: a citizen card and a PSAM are
//! issued with the TEST-ONLY keys from `fixtures/`, put into pcscd's virtual
//! reader (or linked in-process when no pcscd with vpcd is running; the demo
//! says which), and driven through the card's applications as a terminal and
//! the issuer's host would: cardholder, online load, bus fare, transit tap-in
//! and tap-out, a torn purchase recovered from the card, history, and a block.

use std::time::Duration;

use anyhow::{Context, bail};
use card_host::card::CitizenCard;
use card_host::psam::Psam;
use card_host::vpcd::{SLOT0_PORT, SLOT1_PORT, Tear, TearPoint};
use card_host::{CardDateTime, Fen, TerminalNumber, TransactionType};
use system_tests::{LOAD_TERMINAL, ServedCard, TestLoadHost, card_reader, psam_reader, vpcd_available};
use terminal::cardholder::{SocialSecurity, mask_identity};
use terminal::compound::{CompoundRecord, TripState};
use terminal::psam::PsamSession;
use terminal::purse::{PurchaseRequest, Purse};
use terminal::reader::InProcess;
use terminal::reader::pcsc::PcscReaders;
use terminal::{CardSession, Channel};

const BUS_TERMINAL: TerminalNumber = TerminalNumber([0x31, 0x00, 0x00, 0x00, 0x01, 0x01]);

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let in_process = std::env::args().skip(1).any(|argument| argument == "--in-process");
    if std::env::args().skip(1).any(|argument| argument == "--help" || argument == "-h") {
        println!("usage: demo [--in-process]   (default: through pcscd + vpcd when it runs)");
        return Ok(());
    }
    let directory = tempfile::tempdir().context("temporary directory")?;
    println!("citizen card demo — TEST-ONLY keys from fixtures/keys, fictional cardholders");
    let (card_path, card) = system_tests::issue_card(directory.path(), 0, Fen(0));
    let (_, psam) = system_tests::issue_psam(directory.path(), BUS_TERMINAL);
    println!("issued card {} and a PSAM for terminal {BUS_TERMINAL}", card.image().serial.masked());

    if !in_process && vpcd_available() {
        println!("reader: pcscd with the vpcd virtual reader (card in slot 0, PSAM in slot 1)");
        through_pcscd(card, psam)?;
    } else {
        println!(
            "reader: in-process (no pcscd with the vpcd driver{})",
            if in_process { "; --in-process" } else { "" }
        );
        let mut card = InProcess::new(card);
        let mut psam_channel = InProcess::new(psam);
        let mut psam = PsamSession::open(CardSession::new(&mut psam_channel))?;
        let mut purse = day(&mut card, &mut psam)?;
        println!("torn      (a tear needs the real reader; not shown in-process)");
        finish(&mut purse, &mut psam)?;
    }
    let image = CitizenCard::open(&card_path)?;
    println!(
        "card image on disk: balance {} yuan, offline counter {}, online counter {}",
        image.image().purse.balance,
        image.image().purse.offline_counter,
        image.image().purse.online_counter
    );
    Ok(())
}

fn through_pcscd(card: CitizenCard, psam: Psam) -> anyhow::Result<()> {
    let served_card = ServedCard::serve(card, SLOT0_PORT);
    let _served_psam = ServedCard::serve(psam, SLOT1_PORT);
    let readers = PcscReaders::establish()?;
    let mut psam_channel = readers.connect(&psam_reader(), READER_TIMEOUT)?;
    let mut psam = PsamSession::open(CardSession::new(&mut psam_channel))?;
    let mut channel = readers.connect(&card_reader(), READER_TIMEOUT)?;
    let (before, counter) = {
        let mut purse = day(&mut channel, &mut psam)?;
        // A purchase torn after the card debited, before the terminal heard
        // back: INITIALIZE and DEBIT are the card's 1st and 2nd APDUs of it.
        let before = purse.balance()?;
        let counter = offline_counter(&mut purse)?;
        served_card.control().tear_at(Tear { apdu: 2, point: TearPoint::AfterCommand });
        match purse.purchase(&mut psam, &fare()) {
            Err(error) if error.is_card_removed() => {}
            other => bail!("expected the card to leave mid-purchase, got {other:?}"),
        }
        (before, counter)
    };
    println!("torn      card pulled during DEBIT: the terminal does not guess");
    drop(channel);
    readers.wait_for(&card_reader(), false, READER_TIMEOUT)?;
    served_card.control().insert();

    // The card is back: ask it whether the debit happened.
    let mut channel = readers.connect(&card_reader(), READER_TIMEOUT)?;
    let mut purse = Purse::select(CardSession::new(&mut channel))?;
    match purse.prove(TransactionType::PursePurchase, counter.wrapping_add(1))? {
        Some(proof) => println!(
            "recovered GET TRANSACTION PROVE: the debit happened (TAC {}); balance {before} -> {}",
            hex(&proof.tac),
            purse.balance()?
        ),
        None => println!("recovered GET TRANSACTION PROVE: no debit; balance {}", purse.balance()?),
    }
    finish(&mut purse, &mut psam)
}

const READER_TIMEOUT: Duration = Duration::from_secs(10);

fn now() -> CardDateTime {
    CardDateTime::now_utc()
}

fn fare() -> PurchaseRequest {
    PurchaseRequest { amount: Fen(200), at: now(), compound_records: vec![] }
}

/// The offline counter: the number of the newest purchase on the card.
fn offline_counter(purse: &mut Purse<'_>) -> anyhow::Result<u16> {
    let history = purse.history()?;
    Ok(history.iter().find(|record| !record.kind.is_load()).map_or(0, |record| record.number))
}

/// The cardholder, a load, a bus fare and a metro trip; returns the selected purse.
fn day<'a>(card: &'a mut dyn Channel, psam: &mut PsamSession<'_>) -> anyhow::Result<Purse<'a>> {
    let mut social = SocialSecurity::select(CardSession::new(&mut *card))?;
    let information = social.card_information()?;
    social.verify_pin("123456")?;
    let holder = social.cardholder()?;
    println!(
        "cardholder: {} (citizen ID {}), social security card {} version {}",
        holder.name,
        mask_identity(&holder.citizen_id),
        mask_identity(&information.card_number),
        information.version
    );

    let mut purse = Purse::select(CardSession::new(card))?;
    let serial = purse.public_information().application_serial;

    // Online load at a kiosk: the host checks MAC1 and makes MAC2 (TEST ONLY:
    // master keys in memory here; the HSM's job once it exists).
    let amount = Fen(10_000);
    let init = purse.initialize_load(1, amount, &LOAD_TERMINAL)?;
    let at = now();
    let mac2 = TestLoadHost::default()
        .authorise(&serial, &init, amount, &LOAD_TERMINAL, &at)
        .map_err(|_| anyhow::anyhow!("the card's load MAC1 did not verify"))?;
    purse.credit_load(&at, mac2)?;
    println!("load      +{amount} yuan -> balance {}", purse.balance()?);

    let receipt = purse.purchase(psam, &fare())?;
    println!(
        "bus fare  -{} yuan -> balance {} (TAC {}, terminal serial {})",
        receipt.amount,
        purse.balance()?,
        hex(&receipt.tac),
        receipt.terminal_serial
    );

    // Transit: tap in (amount 0, entry record), tap out (distance fare, exit record).
    let tap_in =
        PurchaseRequest { amount: Fen(0), at: now(), compound_records: vec![trip(TripState::TappedIn, Fen(0))] };
    purse.purchase(psam, &tap_in)?;
    let tap_out =
        PurchaseRequest { amount: Fen(300), at: now(), compound_records: vec![trip(TripState::TappedOut, Fen(300))] };
    purse.purchase(psam, &tap_out)?;
    println!("metro     tap in, tap out -3.00 yuan -> balance {}", purse.balance()?);
    Ok(purse)
}

fn finish(purse: &mut Purse<'_>, psam: &mut PsamSession<'_>) -> anyhow::Result<()> {
    println!("history (newest first):");
    for record in purse.history()? {
        println!("  #{:<3} {:?} {:>8} yuan at terminal {}", record.number, record.kind, record.amount, record.terminal);
    }
    purse.application_block(psam)?;
    match purse.purchase(psam, &fare()) {
        Err(error) => println!("blocked   APPLICATION BLOCK with the PSAM's MAC; next purchase refused: {error}"),
        Ok(_) => bail!("a blocked card accepted a purchase"),
    }
    Ok(())
}

/// A metro compound record (the 48-byte layout of docs/card.md) at tap-in or tap-out.
fn trip(state: TripState, fare: Fen) -> (u8, Vec<u8>) {
    let mut record = CompoundRecord::empty(card_host::issue::COMPOUND_METRO);
    record.state = state;
    record.route = 2;
    record.entry_station = 5;
    record.entry_terminal = BUS_TERMINAL;
    record.entry_at = Some(now());
    record.max_fare = Fen(900);
    if state == TripState::TappedOut {
        record.exit_station = 12;
        record.exit_at = Some(now());
        record.fare = fare;
    }
    (record.identifier, record.to_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
