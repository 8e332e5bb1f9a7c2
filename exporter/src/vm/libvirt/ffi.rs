//! The two libvirt calls the `virt` crate (0.5) does not wrap safely, over `virt-sys`:
//! `virDomainListGetStats` (virt 0.5 hands statistics records out as raw pointers and never
//! frees them) and `virDomainGetGuestInfo` (not wrapped). Both return libvirt typed parameters,
//! copied here into owned [`Params`] and freed before returning: no pointer leaves this module.
//!
//! This is the exporter's only `unsafe` code. What comes back is libvirtd's (which relays QEMU
//! and, for guest info, the guest agent), so what is copied is bounded: at most
//! [`MAX_PARAMS`] parameters per domain and [`MAX_STRING_BYTES`] per
//! string value; what is over is counted in [`Params::dropped`], never silently lost.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint};

use virt::domain::Domain;
use virt::error::Error;
use virt_sys as sys;

/// At most this many typed parameters are taken per domain (a domain with 64 disks and a
/// backing chain of 8 each has about 8,000 block parameters).
pub const MAX_PARAMS: usize = 16_384;

/// Longest string parameter value kept (paths, names); longer ones are dropped.
pub const MAX_STRING_BYTES: usize = 4096;

/// One typed parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// INT, UINT, LLONG (as signed).
    Int(i64),
    /// ULLONG.
    UInt(u64),
    /// DOUBLE.
    Double(f64),
    /// BOOLEAN.
    Bool(bool),
    /// STRING.
    Str(String),
}

impl Value {
    /// The value as an unsigned count (negative and non-numeric values: `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Int(i) => u64::try_from(i).ok(),
            Value::UInt(u) => Some(u),
            _ => None,
        }
    }

    /// The value as text, for string parameters.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A list of typed parameters, as libvirt gave them (in order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub params: Vec<(String, Value)>,
    /// Parameters not kept: over [`MAX_PARAMS`], an unknown type, or an over-long string.
    pub dropped: usize,
}

impl Params {
    /// The first parameter named `field`.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.params
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| v)
    }
}

/// Copies `n` typed parameters from `ptr`.
///
/// # Safety
/// `ptr` must point to `n` initialised `virTypedParameter`s (or be null with `n <= 0`).
unsafe fn copy_params(ptr: *const sys::virTypedParameter, n: c_int) -> Params {
    let mut out = Params::default();
    let n = usize::try_from(n).unwrap_or(0);
    if ptr.is_null() {
        return out;
    }
    out.params.reserve(n.min(MAX_PARAMS));
    for i in 0..n {
        if out.params.len() >= MAX_PARAMS {
            out.dropped += n - i;
            break;
        }
        // SAFETY: i < n, and the caller guarantees n initialised elements.
        let p = unsafe { &*ptr.add(i) };
        // The field is a NUL-terminated array of at most VIR_TYPED_PARAM_FIELD_LENGTH bytes.
        let field_bytes: Vec<u8> = p
            .field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let field = String::from_utf8_lossy(&field_bytes).into_owned();
        // SAFETY: the union member read is the one `type_` names.
        let value = unsafe {
            match p.type_ as c_uint {
                sys::VIR_TYPED_PARAM_INT => Some(Value::Int(i64::from(p.value.i))),
                sys::VIR_TYPED_PARAM_UINT => Some(Value::Int(i64::from(p.value.ui))),
                sys::VIR_TYPED_PARAM_LLONG => Some(Value::Int(p.value.l)),
                sys::VIR_TYPED_PARAM_ULLONG => Some(Value::UInt(p.value.ul)),
                sys::VIR_TYPED_PARAM_DOUBLE => Some(Value::Double(p.value.d)),
                sys::VIR_TYPED_PARAM_BOOLEAN => Some(Value::Bool(p.value.b != 0)),
                sys::VIR_TYPED_PARAM_STRING => string_value(p.value.s),
                _ => None,
            }
        };
        match value {
            Some(v) => out.params.push((field, v)),
            None => out.dropped += 1,
        }
    }
    out
}

/// A string parameter, if it is at most [`MAX_STRING_BYTES`] long.
///
/// # Safety
/// `s` must be null or a NUL-terminated string.
unsafe fn string_value(s: *const c_char) -> Option<Value> {
    if s.is_null() {
        return Some(Value::Str(String::new()));
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    (bytes.len() <= MAX_STRING_BYTES)
        .then(|| Value::Str(String::from_utf8_lossy(bytes).into_owned()))
}

/// `virDomainListGetStats([domain], stats, flags)`: one domain's statistics (what
/// `virsh domstats DOMAIN` prints). One call per domain, so that one domain whose QEMU does not
/// answer holds up only its own call.
pub fn domain_stats(domain: &Domain, stats: c_uint, flags: c_uint) -> Result<Params, Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // A NULL-terminated list of one domain, borrowed for the call.
    // SAFETY: `domain` outlives the call; libvirt does not keep the list.
    let mut list: [sys::virDomainPtr; 2] = [unsafe { domain.as_ptr() }, std::ptr::null_mut()];
    // SAFETY: a valid NULL-terminated domain list and an out-pointer.
    let n = unsafe { sys::virDomainListGetStats(list.as_mut_ptr(), stats, &mut records, flags) };
    if n < 0 {
        return Err(Error::last_error());
    }
    let mut out = Params::default();
    if !records.is_null() {
        if n > 0 {
            // SAFETY: libvirt returned n >= 1 valid record pointers.
            let rec = unsafe { &**records };
            // SAFETY: the record holds nparams parameters.
            out = unsafe { copy_params(rec.params, rec.nparams) };
        }
        // SAFETY: the list came from virDomainListGetStats; this frees records, parameters and
        // the records' own domain references.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// `virDomainGetGuestInfo(dom, types)`: what libvirt asks the guest agent for (on libvirt's
/// own agent connection; no taint). Needs a read-write connection.
pub fn guest_info(domain: &Domain, types: c_uint) -> Result<Params, Error> {
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: a valid domain (borrowed for the call) and out-pointers.
    let rc = unsafe { sys::virDomainGetGuestInfo(domain.as_ptr(), types, &mut params, &mut n, 0) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    // SAFETY: libvirt returned n parameters at params.
    let out = unsafe { copy_params(params, n) };
    // SAFETY: the array came from virDomainGetGuestInfo: virTypedParamsFree frees it and its
    // strings.
    unsafe { sys::virTypedParamsFree(params, n) };
    Ok(out)
}
