//! GMS over the binary protocol (service 3, PROTOCOL.md §8.3): for the switch side and other
//! components that already speak deskmux, directly or through a proxy, which routes the
//! service like the others. The same service as the HTTP API ([`super::http`]), the same
//! rules; only the encoding differs.

use std::time::Instant;

use deskmux_codec::msg::{gms, key};
use deskmux_codec::{BodyRef, ErrorCode, Frame, Head};

use super::{AccessMatch, AccessRequest, Gms, GmsError};
use crate::wire::{self, Peer};

/// The protocol error for `e` (its code carries the retry class).
fn error_code(e: &GmsError) -> ErrorCode {
    match e {
        GmsError::Malformed(_) => ErrorCode::MALFORMED,
        GmsError::UnknownGroup(_) | GmsError::NotFound => ErrorCode::NOT_FOUND,
        // Not sent: nothing was booked; retry later, or at the other site.
        GmsError::Exhausted(_) => ErrorCode::UNAVAILABLE,
        GmsError::Overloaded => ErrorCode::OVERLOADED,
        GmsError::Storage {
            maybe_applied: false,
            ..
        } => ErrorCode::UNAVAILABLE,
        GmsError::Storage { .. } => ErrorCode::INTERNAL,
    }
}

fn fail(peer: &Peer, answer: &Head, e: &GmsError) {
    peer.reply(wire::error(answer, error_code(e), &e.to_string()));
}

fn malformed(e: deskmux_codec::BodyError) -> GmsError {
    GmsError::Malformed(format!("malformed body: {e}"))
}

fn read_request(tenant: u32, b: &BodyRef<'_>) -> Result<AccessRequest, GmsError> {
    let user_data = match b.opt_list(key::USER_DATA).map_err(malformed)? {
        Some(l) => crate::limits::read_pairs(l, crate::limits::ListKind::Props)
            .map_err(|e| GmsError::Malformed(format!("user_data: {}", e.message())))?,
        None => Vec::new(),
    };
    let code_len = match b.opt_int(key::CODE_LEN).map_err(malformed)? {
        Some(n) => Some(
            u8::try_from(n).map_err(|_| GmsError::Malformed("code_len must be 0 to 12".into()))?,
        ),
        None => None,
    };
    Ok(AccessRequest {
        tenant,
        group: b.str(key::GROUP).map_err(malformed)?.to_string(),
        caller: b.str(key::CALLER).map_err(malformed)?.to_string(),
        user_data,
        code_len,
    })
}

fn read_match(tenant: u32, b: &BodyRef<'_>) -> Result<AccessMatch, GmsError> {
    Ok(AccessMatch {
        tenant,
        number: b.str(key::NUMBER).map_err(malformed)?.to_string(),
        caller: b
            .opt_str(key::CALLER)
            .map_err(malformed)?
            .map(str::to_string),
        code: b
            .opt_str(key::ACCESS_CODE)
            .map_err(malformed)?
            .map(str::to_string),
    })
}

/// Handle one GMS request of `tenant`'s session, answered on `peer` (exactly once), under the
/// head `answer` (the request's, with the session's tenant and id), not run after `deadline`.
pub fn handle(gms: &Gms, tenant: u32, frame: &Frame, answer: Head, peer: Peer, deadline: Instant) {
    let b = frame.body();
    match answer.msg_type {
        gms::ACCESS_REQUEST => match read_request(tenant, &b) {
            Err(e) => fail(&peer, &answer, &e),
            Ok(r) => gms.request(
                r,
                deadline,
                Box::new(move |out| match out {
                    Ok(bk) => peer.reply(wire::response(&answer, |w| {
                        w.int(key::BOOKING, bk.id);
                        w.str(key::NUMBER, &bk.number)?;
                        if let Some(c) = &bk.code {
                            w.str(key::ACCESS_CODE, c)?;
                        }
                        w.int(key::EXPIRES_MS, bk.expires_ms);
                        Ok(())
                    })),
                    Err(e) => fail(&peer, &answer, &e),
                }),
            ),
        },
        gms::ACCESS_MATCH => match read_match(tenant, &b) {
            Err(e) => fail(&peer, &answer, &e),
            Ok(m) => gms.match_call(
                m,
                deadline,
                Box::new(move |out| match out {
                    Ok(m) => {
                        let data = wire::encode_pairs(&m.user_data);
                        peer.reply(wire::response(&answer, |w| {
                            w.int(key::BOOKING, m.id);
                            w.str(key::GROUP, &m.group)?;
                            w.str(key::CALLER, &m.caller)?;
                            w.raw_list(key::USER_DATA, &data)?;
                            Ok(())
                        }))
                    }
                    Err(e) => fail(&peer, &answer, &e),
                }),
            ),
        },
        _ => peer.reply(wire::error(
            &answer,
            ErrorCode::UNKNOWN_MESSAGE,
            "unknown GMS message",
        )),
    }
}
