//! The PBOC-style e-purse (JR/T 0025 electronic purse; the JT/T 978 transit
//! compound purchase): balance, load, purchase, compound purchase with UPDATE CAPP
//! DATA CACHE, and GET TRANSACTION PROVE for a torn transaction.
//!
//! Counters: INITIALIZE answers the counter as it stands (the number of
//! transactions done); the transaction's own number, written into its record and
//! asked for by GET TRANSACTION PROVE, is that counter plus one. The load TAC covers
//! the counter before the increment (vector A). See `docs/card.md`.

use super::fs::RecordSelector;
use super::{CardImage, CitizenCard, Outcome, PROOFS_MAX, Pending, Proof};
use crate::apdu::{Command, Response};
use crate::crypto::{self, SessionKey};
use crate::model::{CardDateTime, Fen, TerminalNumber, TransactionType};
use crate::status::StatusWord;

/// FID (and SFI) of the public-information file.
pub const PUBLIC_INFO_FID: u16 = 0x0015;
/// FID (and SFI) of the holder-information file.
pub const HOLDER_INFO_FID: u16 = 0x0016;
/// FID (and SFI) of the compound (transit) record file.
pub const COMPOUND_FID: u16 = 0x0017;
/// FID (and SFI) of the cyclic transaction-detail file.
pub const DETAIL_FID: u16 = 0x0018;
/// Length of a transaction-detail record.
pub const DETAIL_RECORD_LENGTH: usize = 23;
/// Compound records one compound purchase may cache before its DEBIT.
pub const CAPP_CACHE_MAX: usize = 4;

/// A load between INITIALIZE FOR LOAD and CREDIT FOR LOAD.
#[derive(Debug, Clone)]
pub(super) struct LoadContext {
    amount: Fen,
    terminal: TerminalNumber,
    session_key: SessionKey,
}

/// A purchase between INITIALIZE FOR (CAPP) PURCHASE and DEBIT FOR PURCHASE.
#[derive(Debug, Clone)]
pub(super) struct PurchaseContext {
    kind: TransactionType,
    key_index: u8,
    amount: Fen,
    terminal: TerminalNumber,
    card_random: [u8; 4],
    cached_records: Vec<(RecordSelector, Vec<u8>)>,
}

/// Amount and terminal number from the 11-byte INITIALIZE data: key index (1),
/// amount (4), terminal number (6).
fn initialize_data(data: &[u8]) -> Result<(u8, Fen, TerminalNumber), StatusWord> {
    let data: &[u8; 11] = data.try_into().map_err(|_| StatusWord::WrongLength)?;
    let amount = Fen::from_bytes([data[1], data[2], data[3], data[4]]);
    let terminal = TerminalNumber::from_slice(&data[5..]).map_err(|_| StatusWord::WrongLength)?;
    Ok((data[0], amount, terminal))
}

fn date_time(bytes: &[u8]) -> Result<CardDateTime, StatusWord> {
    CardDateTime::from_slice(bytes).map_err(|_| StatusWord::WrongData)
}

/// A transaction-detail record (23 bytes): number (2), overdraft (3), amount (4),
/// type (1), terminal (6), date (4), time (3).
fn detail_record(
    counter: u16,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
    at: &CardDateTime,
) -> Vec<u8> {
    let mut record = Vec::with_capacity(DETAIL_RECORD_LENGTH);
    record.extend_from_slice(&counter.to_be_bytes());
    record.extend_from_slice(&[0, 0, 0]);
    record.extend_from_slice(&amount.to_bytes());
    record.push(kind.code());
    record.extend_from_slice(&terminal.0);
    record.extend_from_slice(&at.to_bytes());
    debug_assert_eq!(record.len(), DETAIL_RECORD_LENGTH);
    record
}

fn push_proof(image: &mut CardImage, proof: Proof) {
    image.purse.proofs.insert(0, proof);
    image.purse.proofs.truncate(PROOFS_MAX);
}

fn append_detail(image: &mut CardImage, record: &[u8]) -> Result<(), StatusWord> {
    let purse = image.files.application(super::fs::Application::Purse).ok_or(StatusWord::FileNotFound)?;
    image.files.df_mut(purse).ef_mut(DETAIL_FID).ok_or(StatusWord::FileNotFound)?.append_record(record)
}

impl CitizenCard {
    pub(super) fn purse_command(&mut self, command: &Command, pending: Pending) -> Outcome {
        match command.ins {
            0x5C => self.get_balance(command),
            0x50 => self.initialize(command),
            0x52 => match pending {
                Pending::Load(context) => self.credit_for_load(command, context),
                _ => Err(StatusWord::ConditionsNotSatisfied),
            },
            0x54 => match pending {
                Pending::Purchase(context) => self.debit_for_purchase(command, context),
                _ => Err(StatusWord::ConditionsNotSatisfied),
            },
            0xDC => match pending {
                Pending::Purchase(context) if context.kind == TransactionType::CompoundPurchase => {
                    self.update_capp_data_cache(command, context)
                }
                _ => Err(StatusWord::ConditionsNotSatisfied),
            },
            0x5A => self.get_transaction_prove(command),
            _ => Err(StatusWord::InsNotSupported),
        }
    }

    /// GET BALANCE (`80 5C 00 02 04`): the e-purse balance. P2 `01` (e-deposit) is
    /// not on our card.
    fn get_balance(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0 || command.p2 != 0x02 {
            return Err(StatusWord::IncorrectP1P2);
        }
        Ok(Response::ok(self.image.purse.balance.to_bytes().to_vec()))
    }

    /// INITIALIZE FOR LOAD (P1 `00`), FOR PURCHASE (`01`) or FOR CAPP PURCHASE (`03`).
    fn initialize(&mut self, command: &Command) -> Outcome {
        if command.p2 != 0x02 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let (key_index, amount, terminal) = initialize_data(command.data())?;
        let purse = &self.image.purse;
        let algorithm = self.image.keys.algorithm;
        match command.p1 {
            0x00 => {
                let key = self
                    .image
                    .keys
                    .load
                    .iter()
                    .find(|k| k.index == key_index)
                    .ok_or(StatusWord::KeyIndexNotSupported)?;
                if purse.online_counter == u16::MAX {
                    return Err(StatusWord::CounterAtMaximum);
                }
                let new_balance = purse.balance.checked_add(amount).filter(|b| *b <= purse.balance_max);
                if new_balance.is_none() {
                    return Err(StatusWord::ConditionsNotSatisfied);
                }
                let (version, dlk) = (key.version, key.key.clone());
                let (balance, counter) = (purse.balance, purse.online_counter);
                let card_random = self.random::<4>();
                let session_key = crypto::load_session_key(algorithm, &dlk, card_random, counter);
                let mac1 =
                    crypto::purse::load_mac1(&session_key, balance, amount, TransactionType::PurseLoad, &terminal);
                let mut out = Vec::with_capacity(16);
                out.extend_from_slice(&balance.to_bytes());
                out.extend_from_slice(&counter.to_be_bytes());
                out.extend_from_slice(&[version, algorithm.id()]);
                out.extend_from_slice(&card_random);
                out.extend_from_slice(&mac1);
                self.session.pending = Pending::Load(LoadContext { amount, terminal, session_key });
                Ok(Response::ok(out))
            }
            0x01 | 0x03 => {
                let key = self
                    .image
                    .keys
                    .purchase
                    .iter()
                    .find(|k| k.index == key_index)
                    .ok_or(StatusWord::KeyIndexNotSupported)?;
                if purse.offline_counter == u16::MAX {
                    return Err(StatusWord::CounterAtMaximum);
                }
                if purse.balance < amount {
                    return Err(StatusWord::InsufficientBalance);
                }
                let version = key.version;
                let (balance, counter, overdraft) = (purse.balance, purse.offline_counter, purse.overdraft_limit);
                let card_random = self.random::<4>();
                let mut out = Vec::with_capacity(15);
                out.extend_from_slice(&balance.to_bytes());
                out.extend_from_slice(&counter.to_be_bytes());
                out.extend_from_slice(&overdraft.to_be_bytes()[1..]);
                out.extend_from_slice(&[version, algorithm.id()]);
                out.extend_from_slice(&card_random);
                let kind =
                    if command.p1 == 0x03 { TransactionType::CompoundPurchase } else { TransactionType::PursePurchase };
                self.session.pending = Pending::Purchase(PurchaseContext {
                    kind,
                    key_index,
                    amount,
                    terminal,
                    card_random,
                    cached_records: Vec::new(),
                });
                Ok(Response::ok(out))
            }
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }

    /// CREDIT FOR LOAD (`80 52 00 00 0B`): date (4) ‖ time (3) ‖ MAC2 (4); answers TAC.
    fn credit_for_load(&mut self, command: &Command, context: LoadContext) -> Outcome {
        if command.p1 != 0 || command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let data: &[u8; 11] = command.data().try_into().map_err(|_| StatusWord::WrongLength)?;
        let at = date_time(&data[..7])?;
        let kind = TransactionType::PurseLoad;
        let expected = crypto::purse::load_mac2(&context.session_key, context.amount, kind, &context.terminal, &at);
        if !crypto::constant_time_eq(&expected, &data[7..]) {
            return Err(StatusWord::MacInvalid);
        }
        let mut next = self.image.clone();
        let purse = &mut next.purse;
        let counter_before = purse.online_counter;
        let new_balance = purse
            .balance
            .checked_add(context.amount)
            .filter(|b| *b <= purse.balance_max)
            .ok_or(StatusWord::ConditionsNotSatisfied)?;
        let tac = crypto::purse::load_tac(
            next.keys.algorithm,
            &next.keys.tac,
            new_balance,
            counter_before,
            context.amount,
            kind,
            &context.terminal,
            &at,
        );
        let number = counter_before + 1;
        purse.balance = new_balance;
        purse.online_counter = number;
        purse.loaded_total += u64::from(context.amount.0);
        let mac2: [u8; 4] = expected;
        push_proof(&mut next, Proof { kind, counter: number, mac: mac2, tac });
        append_detail(&mut next, &detail_record(number, context.amount, kind, &context.terminal, &at))?;
        self.commit(next)?;
        tracing::debug!(card = %self.image.serial.masked(), amount = %context.amount, "load credited");
        Ok(Response::ok(tac.to_vec()))
    }

    /// UPDATE CAPP DATA CACHE (`80 DC P1 P2 Lc`): caches a compound record to be
    /// written together with the DEBIT that follows. P2 = SFI `17` << 3 with the
    /// record mode (`000`: P1 is the record identifier; `100`: P1 is the number).
    fn update_capp_data_cache(&mut self, command: &Command, mut context: PurchaseContext) -> Outcome {
        let selector = RecordSelector::from_p1_p2(command.p1, command.p2)?;
        if u16::from(command.p2 >> 3) != COMPOUND_FID {
            return Err(StatusWord::FileNotFound);
        }
        let purse = self.image.files.application(super::fs::Application::Purse).ok_or(StatusWord::FileNotFound)?;
        let ef = self.image.files.df(purse).ef(COMPOUND_FID).ok_or(StatusWord::FileNotFound)?;
        let super::fs::Body::Linear { record_length, .. } = &ef.body else {
            return Err(StatusWord::IncompatibleFileStructure);
        };
        let data = command.data();
        if data.len() != usize::from(*record_length) {
            return Err(StatusWord::WrongLength);
        }
        if let RecordSelector::Identifier(id) = selector
            && data[0] != id
        {
            return Err(StatusWord::WrongData);
        }
        // The record must be writable when the DEBIT comes: try it now on a copy.
        let mut trial = ef.clone();
        for (cached, content) in &context.cached_records {
            trial.put_record(*cached, content)?;
        }
        trial.put_record(selector, data)?;
        if context.cached_records.len() >= CAPP_CACHE_MAX {
            return Err(StatusWord::NotEnoughMemory);
        }
        context.cached_records.push((selector, data.to_vec()));
        self.session.pending = Pending::Purchase(context);
        Ok(Response::ok(Vec::new()))
    }

    /// DEBIT FOR PURCHASE / CAPP PURCHASE (`80 54 01 00 0F`): terminal transaction
    /// serial (4) ‖ date (4) ‖ time (3) ‖ MAC1 (4); answers TAC (4) ‖ MAC2 (4).
    fn debit_for_purchase(&mut self, command: &Command, context: PurchaseContext) -> Outcome {
        if command.p1 != 0x01 || command.p2 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let data: &[u8; 15] = command.data().try_into().map_err(|_| StatusWord::WrongLength)?;
        let terminal_serial = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let at = date_time(&data[4..11])?;
        let algorithm = self.image.keys.algorithm;
        let dpk = &self
            .image
            .keys
            .purchase
            .iter()
            .find(|k| k.index == context.key_index)
            .ok_or(StatusWord::KeyIndexNotSupported)?
            .key;
        let counter_before = self.image.purse.offline_counter;
        let session_key =
            crypto::purchase_session_key(algorithm, dpk, context.card_random, counter_before, terminal_serial);
        let expected = crypto::purse::purchase_mac1(&session_key, context.amount, context.kind, &context.terminal, &at);
        if !crypto::constant_time_eq(&expected, &data[11..]) {
            return Err(StatusWord::MacInvalid);
        }
        let mut next = self.image.clone();
        if !context.cached_records.is_empty() {
            let purse_df = next.files.application(super::fs::Application::Purse).ok_or(StatusWord::FileNotFound)?;
            let compound = next.files.df_mut(purse_df).ef_mut(COMPOUND_FID).ok_or(StatusWord::FileNotFound)?;
            for (selector, content) in &context.cached_records {
                compound.put_record(*selector, content)?;
            }
        }
        let purse = &mut next.purse;
        purse.balance = purse.balance.checked_sub(context.amount).ok_or(StatusWord::InsufficientBalance)?;
        let number = counter_before + 1;
        purse.offline_counter = number;
        purse.spent_total += u64::from(context.amount.0);
        let tac = crypto::purse::purchase_tac(
            algorithm,
            &next.keys.tac,
            context.amount,
            context.kind,
            &context.terminal,
            terminal_serial,
            &at,
        );
        let mac2 = crypto::purse::purchase_mac2(&session_key, context.amount);
        push_proof(&mut next, Proof { kind: context.kind, counter: number, mac: mac2, tac });
        append_detail(&mut next, &detail_record(number, context.amount, context.kind, &context.terminal, &at))?;
        self.commit(next)?;
        tracing::debug!(card = %self.image.serial.masked(), amount = %context.amount, "purchase debited");
        let mut out = tac.to_vec();
        out.extend_from_slice(&mac2);
        Ok(Response::ok(out))
    }

    /// GET TRANSACTION PROVE (`80 5A 00 P2 02`, data: the transaction's number;
    /// P2: its type): answers MAC (4) ‖ TAC (4) of that transaction, or `9406` if the
    /// card has no such transaction (it did not happen).
    fn get_transaction_prove(&mut self, command: &Command) -> Outcome {
        if command.p1 != 0 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let kind = TransactionType::from_code(command.p2).map_err(|_| StatusWord::IncorrectP1P2)?;
        let number = u16::from_be_bytes(command.data().try_into().map_err(|_| StatusWord::WrongLength)?);
        let proof = self
            .image
            .purse
            .proofs
            .iter()
            .find(|p| p.kind == kind && p.counter == number)
            .ok_or(StatusWord::MacNotAvailable)?;
        let mut out = proof.mac.to_vec();
        out.extend_from_slice(&proof.tac);
        Ok(Response::ok(out))
    }
}
