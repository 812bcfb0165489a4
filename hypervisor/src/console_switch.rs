//! Who gets serial input: dom0 or the hypervisor's own console. Pressing
//! Ctrl-A three times in a row switches between them (as in Xen). Ctrl-As that
//! do not make a triple are delivered to whoever has the input once the run
//! breaks, so a guest still sees a single Ctrl-A (e.g. for `screen`).

use alloc::vec::Vec;

/// Ctrl-A.
pub const SWITCH_KEY: u8 = 0x01;
const SWITCH_PRESSES: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Dom0,
    Hypervisor,
}

/// What one input byte amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for dom0's console.
    ToDom0(Vec<u8>),
    /// Keys for the hypervisor's console.
    ToHypervisor(Vec<u8>),
    /// The input moved to this side.
    Switched(Focus),
}

pub struct ConsoleSwitch {
    focus: Focus,
    /// Ctrl-As seen in a row and not yet delivered.
    held: u8,
}

impl Default for ConsoleSwitch {
    fn default() -> Self {
        Self { focus: Focus::Dom0, held: 0 }
    }
}

impl ConsoleSwitch {
    pub fn focus(&self) -> Focus {
        self.focus
    }

    /// Feeds one byte; returns what it means, if anything yet.
    pub fn feed(&mut self, b: u8) -> Option<Input> {
        if b == SWITCH_KEY {
            self.held += 1;
            if self.held < SWITCH_PRESSES {
                return None;
            }
            self.held = 0;
            self.focus = match self.focus {
                Focus::Dom0 => Focus::Hypervisor,
                Focus::Hypervisor => Focus::Dom0,
            };
            return Some(Input::Switched(self.focus));
        }
        let mut bytes = alloc::vec![SWITCH_KEY; usize::from(self.held)];
        self.held = 0;
        bytes.push(b);
        Some(match self.focus {
            Focus::Dom0 => Input::ToDom0(bytes),
            Focus::Hypervisor => Input::ToHypervisor(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_ctrl_a_switch_and_switch_back() {
        let mut s = ConsoleSwitch::default();
        assert_eq!(s.feed(b'l'), Some(Input::ToDom0(vec![b'l'])));
        assert_eq!(s.feed(SWITCH_KEY), None);
        assert_eq!(s.feed(SWITCH_KEY), None);
        assert_eq!(s.feed(SWITCH_KEY), Some(Input::Switched(Focus::Hypervisor)));
        assert_eq!(s.feed(b'e'), Some(Input::ToHypervisor(vec![b'e'])));
        for _ in 0..2 {
            assert_eq!(s.feed(SWITCH_KEY), None);
        }
        assert_eq!(s.feed(SWITCH_KEY), Some(Input::Switched(Focus::Dom0)));
        assert_eq!(s.focus(), Focus::Dom0);
    }

    #[test]
    fn fewer_than_three_reach_the_guest() {
        let mut s = ConsoleSwitch::default();
        assert_eq!(s.feed(SWITCH_KEY), None);
        assert_eq!(s.feed(SWITCH_KEY), None);
        assert_eq!(s.feed(b'x'), Some(Input::ToDom0(vec![SWITCH_KEY, SWITCH_KEY, b'x'])));
        assert_eq!(s.focus(), Focus::Dom0);
    }
}
