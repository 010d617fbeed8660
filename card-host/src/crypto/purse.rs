//! MAC1, MAC2 and TAC of the e-purse load and purchase (JR/T 0025; input layouts
//! confirmed by digest vectors A and B).

use super::{Algorithm, Key16, SessionKey, first4, mac_single_des, mac_sm4};
use crate::model::{CardDateTime, Fen, TerminalNumber, TransactionType};

/// Load MAC1 (card to host): old balance ‖ amount ‖ type ‖ terminal.
pub fn load_mac1(
    key: &SessionKey,
    old_balance: Fen,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
) -> [u8; 4] {
    let mut data = Vec::with_capacity(15);
    data.extend_from_slice(&old_balance.to_bytes());
    data.extend_from_slice(&amount.to_bytes());
    data.push(kind.code());
    data.extend_from_slice(&terminal.0);
    key.mac(&data)
}

/// Load MAC2 (host to card): amount ‖ type ‖ terminal ‖ date ‖ time.
pub fn load_mac2(
    key: &SessionKey,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
    at: &CardDateTime,
) -> [u8; 4] {
    let mut data = Vec::with_capacity(18);
    data.extend_from_slice(&amount.to_bytes());
    data.push(kind.code());
    data.extend_from_slice(&terminal.0);
    data.extend_from_slice(&at.to_bytes());
    key.mac(&data)
}

/// The TAC over `data` with the card's DTK. 3DES: DTK left XOR right as one DES
/// key, CBC-MAC with a zero IV (vector A). SM4: the whole DTK, SM4 CBC-MAC (see crypto.md).
pub fn tac(algorithm: Algorithm, dtk: &Key16, data: &[u8]) -> [u8; 4] {
    match algorithm {
        Algorithm::TripleDes => {
            let (left, right) = (dtk.left(), dtk.right());
            let mut key = [0u8; 8];
            for (k, (l, r)) in key.iter_mut().zip(left.iter().zip(right.iter())) {
                *k = l ^ r;
            }
            first4(&mac_single_des(&key, [0; 8], data))
        }
        Algorithm::Sm4 => first4(&mac_sm4(dtk, [0; 16], data)),
    }
}

/// Load TAC: new balance ‖ online counter before the load ‖ amount ‖ type ‖ terminal ‖ date ‖ time.
#[allow(clippy::too_many_arguments)]
pub fn load_tac(
    algorithm: Algorithm,
    dtk: &Key16,
    new_balance: Fen,
    online_counter: u16,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
    at: &CardDateTime,
) -> [u8; 4] {
    let mut data = Vec::with_capacity(24);
    data.extend_from_slice(&new_balance.to_bytes());
    data.extend_from_slice(&online_counter.to_be_bytes());
    data.extend_from_slice(&amount.to_bytes());
    data.push(kind.code());
    data.extend_from_slice(&terminal.0);
    data.extend_from_slice(&at.to_bytes());
    tac(algorithm, dtk, &data)
}

/// Purchase MAC1 (PSAM to card): amount ‖ type ‖ terminal ‖ date ‖ time.
pub fn purchase_mac1(
    key: &SessionKey,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
    at: &CardDateTime,
) -> [u8; 4] {
    load_mac2(key, amount, kind, terminal, at)
}

/// Purchase MAC2 (card to PSAM): the amount.
pub fn purchase_mac2(key: &SessionKey, amount: Fen) -> [u8; 4] {
    key.mac(&amount.to_bytes())
}

/// Purchase TAC: amount ‖ type ‖ terminal ‖ terminal transaction serial ‖ date ‖ time.
pub fn purchase_tac(
    algorithm: Algorithm,
    dtk: &Key16,
    amount: Fen,
    kind: TransactionType,
    terminal: &TerminalNumber,
    terminal_serial: u32,
    at: &CardDateTime,
) -> [u8; 4] {
    let mut data = Vec::with_capacity(22);
    data.extend_from_slice(&amount.to_bytes());
    data.push(kind.code());
    data.extend_from_slice(&terminal.0);
    data.extend_from_slice(&terminal_serial.to_be_bytes());
    data.extend_from_slice(&at.to_bytes());
    tac(algorithm, dtk, &data)
}
