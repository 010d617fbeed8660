//! The citizen card's and the PSAM's commands as a host sends them: one
//! constructor per command, each naming the clause that defines it. All return a
//! [`Command`], the one type that knows how to serialise itself.

use crate::apdu::Command;
use crate::model::{CardDateTime, Fen, TerminalNumber, TransactionType};

/// SELECT by DF name (ISO 7816-4 11.1.1, P1 `04`), FCI requested.
pub fn select_by_name(name: &[u8]) -> Command {
    Command::new(0x00, 0xA4, 0x04, 0x00).with_data(name.to_vec()).expect(256)
}

/// SELECT by file identifier (ISO 7816-4 11.1.1, P1 `00`), no response data.
pub fn select_by_fid(fid: u16) -> Command {
    Command::new(0x00, 0xA4, 0x00, 0x0C).with_data(fid.to_be_bytes().to_vec())
}

/// READ BINARY of the EF with a short file identifier (ISO 7816-4 11.2.3).
pub fn read_binary(sfi: u8, offset: u8, length: usize) -> Command {
    Command::new(0x00, 0xB0, 0x80 | (sfi & 0x1F), offset).expect(length)
}

/// READ RECORD by number from the EF with a short file identifier (ISO 7816-4 11.3.3).
pub fn read_record(sfi: u8, number: u8) -> Command {
    Command::new(0x00, 0xB2, number, (sfi << 3) | 0x04).expect(256)
}

/// READ RECORD by record identifier (the first byte, the TLV tag) (ISO 7816-4 11.3.3).
pub fn read_record_by_identifier(sfi: u8, identifier: u8) -> Command {
    Command::new(0x00, 0xB2, identifier, sfi << 3).expect(256)
}

/// APPEND RECORD to the EF with a short file identifier (ISO 7816-4 11.3.6).
pub fn append_record(sfi: u8, record: &[u8]) -> Command {
    Command::new(0x00, 0xE2, 0x00, sfi << 3).with_data(record.to_vec())
}

/// GET CHALLENGE (ISO 7816-4 11.5.3) of 4 or 8 bytes.
pub fn get_challenge(length: usize) -> Command {
    Command::new(0x00, 0x84, 0x00, 0x00).expect(length)
}

/// EXTERNAL AUTHENTICATE (ISO 7816-4 11.5.4) with the terminal's cryptogram.
pub fn external_authenticate(cryptogram: [u8; 8]) -> Command {
    Command::new(0x00, 0x82, 0x00, 0x00).with_data(cryptogram.to_vec())
}

/// VERIFY (ISO 7816-4 11.5.6) of the cardholder PIN in packed BCD.
pub fn verify_pin(pin: &[u8]) -> Command {
    Command::new(0x00, 0x20, 0x00, 0x00).with_data(pin.to_vec())
}

/// CHANGE PIN (JR/T 0025 `80 5E 01 00`): old PIN ‖ `FF` ‖ new PIN.
pub fn change_pin(old: &[u8], new: &[u8]) -> Command {
    let mut data = old.to_vec();
    data.push(0xFF);
    data.extend_from_slice(new);
    Command::new(0x80, 0x5E, 0x01, 0x00).with_data(data)
}

/// GET BALANCE of the e-purse (JR/T 0025 `80 5C 00 02 04`).
pub fn get_balance() -> Command {
    Command::new(0x80, 0x5C, 0x00, 0x02).expect(4)
}

fn initialize(p1: u8, key_index: u8, amount: Fen, terminal: &TerminalNumber, expected: usize) -> Command {
    let mut data = vec![key_index];
    data.extend_from_slice(&amount.to_bytes());
    data.extend_from_slice(&terminal.0);
    Command::new(0x80, 0x50, p1, 0x02).with_data(data).expect(expected)
}

/// INITIALIZE FOR LOAD (JR/T 0025 `80 50 00 02 0B`).
pub fn initialize_for_load(key_index: u8, amount: Fen, terminal: &TerminalNumber) -> Command {
    initialize(0x00, key_index, amount, terminal, 16)
}

/// INITIALIZE FOR PURCHASE (JR/T 0025 `80 50 01 02 0B`).
pub fn initialize_for_purchase(key_index: u8, amount: Fen, terminal: &TerminalNumber) -> Command {
    initialize(0x01, key_index, amount, terminal, 15)
}

/// INITIALIZE FOR CAPP PURCHASE, the compound purchase of transit (JT/T 978 `80 50 03 02 0B`).
pub fn initialize_for_capp_purchase(key_index: u8, amount: Fen, terminal: &TerminalNumber) -> Command {
    initialize(0x03, key_index, amount, terminal, 15)
}

/// CREDIT FOR LOAD (JR/T 0025 `80 52 00 00 0B`): host date and time, MAC2.
pub fn credit_for_load(at: &CardDateTime, mac2: [u8; 4]) -> Command {
    let mut data = at.to_bytes().to_vec();
    data.extend_from_slice(&mac2);
    Command::new(0x80, 0x52, 0x00, 0x00).with_data(data).expect(4)
}

/// UPDATE CAPP DATA CACHE (JT/T 978 `80 DC`): the whole compound record with
/// this identifier, in the compound file (SFI `17`).
pub fn update_capp_data_cache(identifier: u8, record: &[u8]) -> Command {
    Command::new(0x80, 0xDC, identifier, 0x17 << 3).with_data(record.to_vec())
}

/// DEBIT FOR PURCHASE / CAPP PURCHASE (JR/T 0025 `80 54 01 00 0F`).
pub fn debit_for_purchase(terminal_serial: u32, at: &CardDateTime, mac1: [u8; 4]) -> Command {
    let mut data = terminal_serial.to_be_bytes().to_vec();
    data.extend_from_slice(&at.to_bytes());
    data.extend_from_slice(&mac1);
    Command::new(0x80, 0x54, 0x01, 0x00).with_data(data).expect(8)
}

/// GET TRANSACTION PROVE (JR/T 0025 `80 5A 00 P2 02`): the transaction's type and
/// its number (the counter after it).
pub fn get_transaction_prove(kind: TransactionType, number: u16) -> Command {
    Command::new(0x80, 0x5A, 0x00, kind.code()).with_data(number.to_be_bytes().to_vec()).expect(8)
}

/// The header and data a maintenance MAC covers: the command as it will be sent,
/// with CLA `84` and Lc counting the 4 MAC bytes.
pub fn maintenance_mac_input(ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
    let mut input = vec![0x84, ins, p1, p2, (data.len() + 4) as u8];
    input.extend_from_slice(data);
    input
}

/// APPLICATION BLOCK (JR/T 0025 `84 1E 00 00 04`, temporary) with its MAC.
pub fn application_block(mac: [u8; 4]) -> Command {
    Command::new(0x84, 0x1E, 0x00, 0x00).with_data(mac.to_vec())
}

/// APPLICATION UNBLOCK (JR/T 0025 `84 18 00 00 04`) with its MAC.
pub fn application_unblock(mac: [u8; 4]) -> Command {
    Command::new(0x84, 0x18, 0x00, 0x00).with_data(mac.to_vec())
}

/// PIN RELOAD (ours: `84 5E 00 00`): the new PIN and a MAC under the PIN-reload key.
pub fn reload_pin(pin: &[u8], mac: [u8; 4]) -> Command {
    let mut data = pin.to_vec();
    data.extend_from_slice(&mac);
    Command::new(0x84, 0x5E, 0x00, 0x00).with_data(data)
}

/// The PSAM's commands.
pub mod psam {
    use super::*;

    /// READ BINARY of the PSAM's terminal number (file `0016`).
    pub fn read_terminal_number() -> Command {
        read_binary(0x16, 0, 6)
    }

    /// READ BINARY of the purchase application information (file `0017`): its first
    /// byte is the key index to ask the card for.
    pub fn read_purchase_information() -> Command {
        read_binary(0x17, 0, 25)
    }

    /// What INIT SAM FOR PURCHASE needs from the card and the terminal.
    #[derive(Debug, Clone)]
    pub struct PurchaseInput<'a> {
        pub card_random: [u8; 4],
        pub offline_counter: u16,
        pub amount: Fen,
        pub kind: TransactionType,
        pub at: CardDateTime,
        pub key_version: u8,
        pub algorithm_id: u8,
        pub application_serial: [u8; 8],
        /// Higher-level diversification factors, after the card's.
        pub higher_factors: &'a [[u8; 8]],
    }

    /// INIT SAM FOR PURCHASE (`80 70 00 00 Lc`).
    pub fn init_for_purchase(input: &PurchaseInput<'_>) -> Command {
        let mut data = input.card_random.to_vec();
        data.extend_from_slice(&input.offline_counter.to_be_bytes());
        data.extend_from_slice(&input.amount.to_bytes());
        data.push(input.kind.code());
        data.extend_from_slice(&input.at.to_bytes());
        data.push(input.key_version);
        data.push(input.algorithm_id);
        data.extend_from_slice(&input.application_serial);
        for factor in input.higher_factors {
            data.extend_from_slice(factor);
        }
        Command::new(0x80, 0x70, 0x00, 0x00).with_data(data).expect(8)
    }

    /// CREDIT SAM FOR PURCHASE (`80 72 00 00 04`): the card's MAC2 to check.
    pub fn credit_for_purchase(mac2: [u8; 4]) -> Command {
        Command::new(0x80, 0x72, 0x00, 0x00).with_data(mac2.to_vec())
    }

    /// DIVERSIFY (`80 1A P1 P2`) a maintenance key (usage `05`) by the card's factor.
    pub fn diversify_maintenance(application_serial: [u8; 8]) -> Command {
        Command::new(0x80, 0x1A, 0x25, 0x01).with_data(application_serial.to_vec())
    }

    /// CIPHER DATA (`80 FA 05 00`): a MAC over `message` with the card's challenge.
    pub fn mac(challenge: [u8; 4], message: &[u8]) -> Command {
        let mut data = challenge.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0]);
        data.extend_from_slice(message);
        Command::new(0x80, 0xFA, 0x05, 0x00).with_data(data).expect(4)
    }
}
