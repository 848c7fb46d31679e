//! What the runtime's tests share.

use hetpar_runtime::reference::Config;

/// The tiny reference configuration: Hv 8, Av 2, Fv 16, P 6, Np 8, Lv 1, Hp 12; H 8, A 2, F 16,
/// V 11, S 12, L 2.
pub fn tiny() -> Config {
    Config {
        lv: 1,
        hv: 8,
        av: 2,
        fv: 16,
        p: 6,
        np: 8,
        hp: 12,
        l: 2,
        h: 8,
        a: 2,
        f: 16,
        v: 11,
        s: 12,
        audio: None,
    }
}
