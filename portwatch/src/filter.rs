//! Stage 5: which events the operator asked to see.

use crate::event::{Errno, Event};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub errno: Option<Errno>,
    pub dport: Option<u16>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        self.pid.is_none_or(|p| ev.pid == p)
            && self.comm.as_deref().is_none_or(|c| ev.comm == c)
            && self.errno.is_none_or(|e| ev.errno == e)
            && self.dport.is_none_or(|d| ev.dport == Some(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::sample_event;

    #[test]
    fn each_filter_selects() {
        let ev = sample_event();
        assert!(Filter::default().matches(&ev));
        assert!(Filter {
            pid: Some(ev.pid),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            pid: Some(ev.pid + 1),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            comm: Some("curl".into()),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            comm: Some("cur".into()),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            errno: Some(Errno::EADDRNOTAVAIL),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            errno: Some(Errno::EADDRINUSE),
            ..Default::default()
        }
        .matches(&ev));
        assert!(Filter {
            dport: Some(7100),
            ..Default::default()
        }
        .matches(&ev));
        assert!(!Filter {
            dport: Some(7101),
            ..Default::default()
        }
        .matches(&ev));
        let mut bind = ev.clone();
        bind.dport = None;
        assert!(!Filter {
            dport: Some(7100),
            ..Default::default()
        }
        .matches(&bind));
        // Filters combine with AND.
        assert!(!Filter {
            pid: Some(ev.pid),
            comm: Some("wget".into()),
            ..Default::default()
        }
        .matches(&ev));
    }
}
