//! Block cipher operations and the ISO/IEC 9797-1 MACs, over RustCrypto's `des`
//! and `sm4`.

use cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use des::{Des, TdesEde2};
use sm4::Sm4;

use super::Key16;

pub fn des_encrypt_block(key: &[u8; 8], block: [u8; 8]) -> [u8; 8] {
    let cipher = Des::new(&Array::from(*key));
    let mut block = Array::from(block);
    cipher.encrypt_block(&mut block);
    block.into()
}

pub fn des_decrypt_block(key: &[u8; 8], block: [u8; 8]) -> [u8; 8] {
    let cipher = Des::new(&Array::from(*key));
    let mut block = Array::from(block);
    cipher.decrypt_block(&mut block);
    block.into()
}

/// 2-key 3DES (EDE, K1 ‖ K2 ‖ K1) encryption of one block.
pub fn tdes_encrypt_block(key: &Key16, block: [u8; 8]) -> [u8; 8] {
    let cipher = TdesEde2::new(&Array::from(*key.expose()));
    let mut block = Array::from(block);
    cipher.encrypt_block(&mut block);
    block.into()
}

pub fn tdes_decrypt_block(key: &Key16, block: [u8; 8]) -> [u8; 8] {
    let cipher = TdesEde2::new(&Array::from(*key.expose()));
    let mut block = Array::from(block);
    cipher.decrypt_block(&mut block);
    block.into()
}

pub fn sm4_encrypt_block(key: &Key16, block: [u8; 16]) -> [u8; 16] {
    let cipher = Sm4::new(&Array::from(*key.expose()));
    let mut block = Array::from(block);
    cipher.encrypt_block(&mut block);
    block.into()
}

pub fn sm4_decrypt_block(key: &Key16, block: [u8; 16]) -> [u8; 16] {
    let cipher = Sm4::new(&Array::from(*key.expose()));
    let mut block = Array::from(block);
    cipher.decrypt_block(&mut block);
    block.into()
}

/// ISO/IEC 9797-1 padding method 2: append `80`, then `00` up to a multiple of
/// `block_size`; always at least one byte is added.
pub fn pad_method2(data: &[u8], block_size: usize) -> Vec<u8> {
    let mut padded = Vec::with_capacity(data.len() + block_size);
    padded.extend_from_slice(data);
    padded.push(0x80);
    while padded.len() % block_size != 0 {
        padded.push(0x00);
    }
    padded
}

fn xor_into<const N: usize>(state: &mut [u8; N], chunk: &[u8]) {
    for (s, c) in state.iter_mut().zip(chunk) {
        *s ^= c;
    }
}

/// ISO/IEC 9797-1 MAC algorithm 1 with single DES: CBC over the padded data
/// from `iv`; returns the whole last block.
pub fn mac_single_des(key: &[u8; 8], iv: [u8; 8], data: &[u8]) -> [u8; 8] {
    let cipher = Des::new(&Array::from(*key));
    let mut state = iv;
    for chunk in pad_method2(data, 8).chunks(8) {
        xor_into(&mut state, chunk);
        let mut block = Array::from(state);
        cipher.encrypt_block(&mut block);
        state = block.into();
    }
    state
}

/// ISO/IEC 9797-1 MAC algorithm 3 (the retail MAC): single-DES CBC with the left
/// half of the key, then the last block decrypted with the right half and
/// encrypted with the left.
pub fn mac_retail(key: &Key16, iv: [u8; 8], data: &[u8]) -> [u8; 8] {
    let state = mac_single_des(&key.left(), iv, data);
    des_encrypt_block(&key.left(), des_decrypt_block(&key.right(), state))
}

/// CBC-MAC with SM4 over the padded data (16-byte blocks) from `iv`.
pub fn mac_sm4(key: &Key16, iv: [u8; 16], data: &[u8]) -> [u8; 16] {
    let cipher = Sm4::new(&Array::from(*key.expose()));
    let mut state = iv;
    for chunk in pad_method2(data, 16).chunks(16) {
        xor_into(&mut state, chunk);
        let mut block = Array::from(state);
        cipher.encrypt_block(&mut block);
        state = block.into();
    }
    state
}
