//! The mailbox of `nestfault_protocol` as bytes of guest memory, both ways: written into L1's
//! memory image by the layout, read back from guest memory by the VM after L1 reports.

use nestfault_protocol::{Executor, Mailbox};
use vm_memory::ByteValued;

#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct GuestMailbox(pub Mailbox);

impl Default for GuestMailbox {
    fn default() -> Self {
        GuestMailbox(Mailbox::new(Executor::Svm))
    }
}

// SAFETY: Mailbox is #[repr(C)] and made only of u64s and arrays of #[repr(C)] pairs of u64s:
// it has no padding, and every bit pattern is a valid value.
unsafe impl ByteValued for GuestMailbox {}

impl GuestMailbox {
    /// The mailbox as it lies in guest memory.
    pub fn bytes(mailbox: &Mailbox) -> Vec<u8> {
        GuestMailbox(*mailbox).as_slice().to_vec()
    }

    /// The mailbox in `bytes` (at least its size), or `None` if they are too short. (The VM reads
    /// guest memory with `read_obj`; tests read images.)
    #[cfg(test)]
    pub fn from_bytes(bytes: &[u8]) -> Option<Mailbox> {
        let size = std::mem::size_of::<Mailbox>();
        let mut mailbox = GuestMailbox::default();
        mailbox.as_mut_slice().copy_from_slice(bytes.get(..size)?);
        Some(mailbox.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_round_trips_through_bytes() {
        let mut mailbox = Mailbox::new(Executor::Vmx);
        mailbox.exit[2] = 0x1234;
        mailbox.writes[3].value = 7;
        let bytes = GuestMailbox::bytes(&mailbox);
        assert_eq!(bytes.len(), std::mem::size_of::<Mailbox>());
        assert_eq!(&bytes[..8], b"NFMAILBX");
        let back = GuestMailbox::from_bytes(&bytes).unwrap();
        assert_eq!(
            (back.exit, back.writes[3].value, back.executor),
            (mailbox.exit, 7, 2)
        );
        assert!(GuestMailbox::from_bytes(&bytes[1..]).is_none());
    }
}
