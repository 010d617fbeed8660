//! The e-purse and transit application (JR/T 0025, JT/T 978) as a terminal
//! drives it: balance and history, purchase and compound purchase with the PSAM,
//! load with the host's MAC2, and GET TRANSACTION PROVE after a tear.

use card_host::commands::{self, psam::PurchaseInput};
use card_host::issue::PURSE_AID;
use card_host::responses::{
    Debit, LoadInitialization, PsamPurchase, PublicInformation, PurchaseInitialization, TransactionProof,
    TransactionRecord,
};
use card_host::status::StatusWord;
use card_host::{CardDateTime, Fen, TerminalNumber, TransactionType};

use crate::psam::PsamSession;
use crate::session::{CardError, CardSession};

/// Records of the cyclic transaction-detail file (EF `0018`).
pub const HISTORY_RECORDS_MAX: u8 = 10;
const TRANSACTION_DETAIL_SFI: u8 = 0x18;
const PUBLIC_INFORMATION_SFI: u8 = 0x15;
const COMPOUND_SFI: u8 = 0x17;

/// The e-purse application, selected.
pub struct Purse<'a> {
    session: CardSession<'a>,
    public: PublicInformation,
}

/// A purchase to make.
#[derive(Debug, Clone)]
pub struct PurchaseRequest {
    pub amount: Fen,
    pub at: CardDateTime,
    /// Compound (transit) records to write with the debit: (record identifier,
    /// whole record). Empty for an ordinary purchase.
    pub compound_records: Vec<(u8, Vec<u8>)>,
}

/// What a completed purchase proves, for the journal and clearing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurchaseReceipt {
    pub kind: TransactionType,
    pub amount: Fen,
    pub balance_before: Fen,
    /// The card's offline counter before this purchase (the TAC's transaction
    /// number is this + 1).
    pub offline_counter: u16,
    pub terminal_serial: u32,
    pub tac: [u8; 4],
    pub mac2: [u8; 4],
}

impl PurchaseReceipt {
    /// The transaction's number as GET TRANSACTION PROVE knows it.
    pub fn number(&self) -> u16 {
        self.offline_counter.wrapping_add(1)
    }
}

impl<'a> Purse<'a> {
    /// Selects the e-purse application and reads its public information.
    pub fn select(mut session: CardSession<'a>) -> Result<Self, CardError> {
        session.ok("SELECT e-purse", &commands::select_by_name(&PURSE_AID))?;
        let public = PublicInformation::parse(
            &session.ok("READ BINARY public information", &commands::read_binary(PUBLIC_INFORMATION_SFI, 0, 30))?,
        )?;
        Ok(Purse { session, public })
    }

    pub fn public_information(&self) -> &PublicInformation {
        &self.public
    }

    pub fn balance(&mut self) -> Result<Fen, CardError> {
        let data = self.session.ok("GET BALANCE", &commands::get_balance())?;
        let bytes: [u8; 4] = data.as_slice().try_into().map_err(|_| card_host::responses::ResponseError::Length {
            what: "GET BALANCE",
            expected: 4,
            got: data.len(),
        })?;
        Ok(Fen::from_bytes(bytes))
    }

    /// The compound (transit) record with `identifier` (`docs/card.md`: 48
    /// bytes, `01` bus, `02` metro), read from EF `0017`.
    pub fn compound_record(&mut self, identifier: u8) -> Result<Vec<u8>, CardError> {
        self.session.ok("READ RECORD compound record", &commands::read_record_by_identifier(COMPOUND_SFI, identifier))
    }

    /// The transaction details, newest first.
    pub fn history(&mut self) -> Result<Vec<TransactionRecord>, CardError> {
        let mut records = Vec::new();
        for number in 1..=HISTORY_RECORDS_MAX {
            let response = self.session.send(&commands::read_record(TRANSACTION_DETAIL_SFI, number))?;
            match response.status() {
                StatusWord::Ok => records.push(TransactionRecord::parse(response.data())?),
                StatusWord::RecordNotFound => break,
                status => return Err(CardError::Refused { command: "READ RECORD transaction detail", status }),
            }
        }
        Ok(records)
    }

    /// A purchase (or, with compound records, a transit compound purchase):
    /// INITIALIZE, the PSAM's MAC1, [UPDATE CAPP DATA CACHE], DEBIT, the PSAM
    /// checks MAC2. If the card leaves after DEBIT was sent the error says so
    /// ([`CardError::is_card_removed`]) and only [`Purse::prove`] can tell whether
    /// the debit happened.
    ///
    /// The same steps one at a time, so a journal can be written between MAC1
    /// and DEBIT: [`Purse::initialize`], [`Initialized::authorise`],
    /// [`Authorised::debit`], [`Debited::verify`].
    pub fn purchase(
        &mut self,
        psam: &mut PsamSession<'_>,
        request: &PurchaseRequest,
    ) -> Result<PurchaseReceipt, CardError> {
        self.initialize(psam, request)?.authorise(psam)?.debit()?.verify(psam)
    }

    /// INITIALIZE FOR PURCHASE (or CAPP PURCHASE when the request carries
    /// compound records): the card's balance, offline counter and random.
    pub fn initialize<'p>(
        &'p mut self,
        psam: &PsamSession<'_>,
        request: &PurchaseRequest,
    ) -> Result<Initialized<'p, 'a>, CardError> {
        let compound = !request.compound_records.is_empty();
        let terminal = psam.terminal_number();
        let initialize = if compound {
            commands::initialize_for_capp_purchase(psam.key_index(), request.amount, &terminal)
        } else {
            commands::initialize_for_purchase(psam.key_index(), request.amount, &terminal)
        };
        let init = PurchaseInitialization::parse(&self.session.ok("INITIALIZE FOR PURCHASE", &initialize)?)?;
        let kind = if compound { TransactionType::CompoundPurchase } else { TransactionType::PursePurchase };
        Ok(Initialized { purse: self, request: request.clone(), kind, init })
    }
    /// INITIALIZE FOR LOAD: the card's balance, online counter, random and MAC1,
    /// for the host to check before it makes MAC2.
    pub fn initialize_load(
        &mut self,
        key_index: u8,
        amount: Fen,
        terminal: &TerminalNumber,
    ) -> Result<LoadInitialization, CardError> {
        Ok(LoadInitialization::parse(
            &self.session.ok("INITIALIZE FOR LOAD", &commands::initialize_for_load(key_index, amount, terminal))?,
        )?)
    }

    /// CREDIT FOR LOAD with the host's MAC2; returns the card's TAC.
    pub fn credit_load(&mut self, at: &CardDateTime, mac2: [u8; 4]) -> Result<[u8; 4], CardError> {
        let data = self.session.ok("CREDIT FOR LOAD", &commands::credit_for_load(at, mac2))?;
        data.as_slice().try_into().map_err(|_| {
            CardError::Response(card_host::responses::ResponseError::Length {
                what: "CREDIT FOR LOAD",
                expected: 4,
                got: data.len(),
            })
        })
    }

    /// GET TRANSACTION PROVE: the MAC and TAC of transaction `number` of `kind`,
    /// or `None` when the card has no such transaction (it did not happen).
    pub fn prove(&mut self, kind: TransactionType, number: u16) -> Result<Option<TransactionProof>, CardError> {
        let response = self.session.send(&commands::get_transaction_prove(kind, number))?;
        match response.status() {
            StatusWord::Ok => Ok(Some(TransactionProof::parse(response.data())?)),
            StatusWord::MacNotAvailable | StatusWord::RecordNotFound => Ok(None),
            status => Err(CardError::Refused { command: "GET TRANSACTION PROVE", status }),
        }
    }

    /// Sends a maintenance command (APPLICATION BLOCK/UNBLOCK) whose MAC the PSAM
    /// makes over the card's fresh challenge.
    pub fn application_block(&mut self, psam: &mut PsamSession<'_>) -> Result<(), CardError> {
        let challenge = self.session.ok("GET CHALLENGE", &commands::get_challenge(4))?;
        let challenge: [u8; 4] = challenge.as_slice().try_into().map_err(|_| {
            CardError::Response(card_host::responses::ResponseError::Length {
                what: "GET CHALLENGE",
                expected: 4,
                got: challenge.len(),
            })
        })?;
        let input = commands::maintenance_mac_input(0x1E, 0x00, 0x00, &[]);
        let mac = psam.maintenance_mac(self.public.application_serial.0, challenge, &input)?;
        self.session.ok("APPLICATION BLOCK", &commands::application_block(mac))?;
        Ok(())
    }

    pub fn into_session(self) -> CardSession<'a> {
        self.session
    }
}

/// A purchase the card has initialised: its balance and offline counter are
/// known; nothing has changed on the card.
pub struct Initialized<'p, 'a> {
    purse: &'p mut Purse<'a>,
    request: PurchaseRequest,
    kind: TransactionType,
    init: PurchaseInitialization,
}

impl<'p, 'a> Initialized<'p, 'a> {
    pub fn initialization(&self) -> &PurchaseInitialization {
        &self.init
    }

    pub fn kind(&self) -> TransactionType {
        self.kind
    }

    /// INIT SAM FOR PURCHASE (the PSAM uses up a terminal transaction serial and
    /// makes MAC1), then the compound records go into the card's cache. The card
    /// has still not changed: its records are written with the DEBIT.
    pub fn authorise(self, psam: &mut PsamSession<'_>) -> Result<Authorised<'p, 'a>, CardError> {
        let Initialized { purse, request, kind, init } = self;
        let sam = psam.init_for_purchase(&PurchaseInput {
            card_random: init.card_random,
            offline_counter: init.offline_counter,
            amount: request.amount,
            kind,
            at: request.at,
            key_version: init.key_version,
            algorithm_id: init.algorithm_id,
            application_serial: purse.public.application_serial.0,
            higher_factors: &[],
        })?;
        for (identifier, record) in &request.compound_records {
            purse.session.ok("UPDATE CAPP DATA CACHE", &commands::update_capp_data_cache(*identifier, record))?;
        }
        Ok(Authorised { purse, request, kind, init, sam })
    }
}

/// A purchase with the PSAM's MAC1, ready for DEBIT: the moment to write the
/// journal's intent.
pub struct Authorised<'p, 'a> {
    purse: &'p mut Purse<'a>,
    request: PurchaseRequest,
    kind: TransactionType,
    init: PurchaseInitialization,
    sam: PsamPurchase,
}

impl<'p, 'a> Authorised<'p, 'a> {
    pub fn kind(&self) -> TransactionType {
        self.kind
    }

    pub fn amount(&self) -> Fen {
        self.request.amount
    }

    pub fn at(&self) -> CardDateTime {
        self.request.at
    }

    pub fn balance_before(&self) -> Fen {
        self.init.balance
    }

    /// The card's offline counter before this purchase; the debit will be
    /// transaction number counter + 1.
    pub fn offline_counter(&self) -> u16 {
        self.init.offline_counter
    }

    /// The PSAM's terminal transaction serial for this purchase.
    pub fn terminal_serial(&self) -> u32 {
        self.sam.terminal_serial
    }

    /// DEBIT FOR PURCHASE. An error with [`CardError::is_card_removed`] means the
    /// outcome is unknown: ask the card with [`Purse::prove`] when it is back.
    pub fn debit(self) -> Result<Debited, CardError> {
        let Authorised { purse, request, kind, init, sam } = self;
        let command = commands::debit_for_purchase(sam.terminal_serial, &request.at, sam.mac1);
        let debit = Debit::parse(&purse.session.ok("DEBIT FOR PURCHASE", &command)?)?;
        Ok(Debited {
            receipt: PurchaseReceipt {
                kind,
                amount: request.amount,
                balance_before: init.balance,
                offline_counter: init.offline_counter,
                terminal_serial: sam.terminal_serial,
                tac: debit.tac,
                mac2: debit.mac2,
            },
        })
    }
}

/// The card has debited and answered its TAC and MAC2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debited {
    receipt: PurchaseReceipt,
}

impl Debited {
    /// What the card proved: amount, counter, TAC and MAC2 (not yet checked by
    /// the PSAM).
    pub fn receipt(&self) -> PurchaseReceipt {
        self.receipt
    }

    /// CREDIT SAM FOR PURCHASE: the PSAM checks the card's MAC2.
    pub fn verify(self, psam: &mut PsamSession<'_>) -> Result<PurchaseReceipt, CardError> {
        psam.credit_for_purchase(self.receipt.mac2)?;
        Ok(self.receipt)
    }
}
