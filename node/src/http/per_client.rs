//! Open connections per client address and listener (`--max-connections-per-client`), so one
//! client cannot take every slot of `--max-connections`. Loopback clients are not counted (a
//! local proxy or health checker is the operator's own); IPv6 clients count per /64, the
//! smallest block a host is usually given.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// The open connections of each client address of one listener.
#[derive(Default)]
pub struct PerClient {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection: its client's count goes down when it is dropped.
pub struct ClientSlot {
    owner: Arc<PerClient>,
    key: Option<IpAddr>,
}

impl PerClient {
    /// `cap` connections per client; 0 means no cap.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(PerClient {
            cap,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when that client has `cap` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        if self.cap == 0 || ip.is_loopback() {
            return Some(ClientSlot {
                owner: self.clone(),
                key: None,
            });
        }
        let key = match ip {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
            v4 => v4,
        };
        let mut open = self.open.lock().expect("per-client lock");
        let count = open.entry(key).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            owner: self.clone(),
            key: Some(key),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.owner.open.lock().expect("per-client lock");
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_at_most_its_cap_and_slots_come_back() {
        let per = PerClient::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (s1, s2) = (per.admit(a).unwrap(), per.admit(a).unwrap());
        assert!(per.admit(a).is_none());
        assert!(per.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(s1);
        let s3 = per.admit(a).unwrap();
        drop((s2, s3));
        assert!(per.open.lock().unwrap().is_empty());
        // One IPv6 /64 is one client; an IPv4-mapped address is its IPv4 client.
        let _x = per.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _y = per.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(per.admit("2001:db8::ffff:1".parse().unwrap()).is_none());
        assert!(per.admit("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _m = per.admit("::ffff:192.0.2.9".parse().unwrap()).unwrap();
        let _n = per.admit("192.0.2.9".parse().unwrap()).unwrap();
        assert!(per.admit("192.0.2.9".parse().unwrap()).is_none());
        // Loopback is never counted, and 0 means no cap.
        let local: Vec<_> = (0..10)
            .map(|_| per.admit("127.0.0.1".parse().unwrap()))
            .collect();
        assert!(local.iter().all(Option::is_some));
        let free = PerClient::new(0);
        assert!((0..10).all(|_| free.admit(a).is_some()));
    }
}
