//! Which member events each device was sent while lazy-loading members, so a sync does not
//! send them again: Synapse's `lazy_loaded_members_cache`, kept the same way.
//!
//! Synapse remembers, per `(user, device)`, the last member event ID sent for each user ID
//! (in `state`, or in a timeline), in memory, up to 100 user IDs per device for 30 minutes.
//! An incremental sync leaves out of `state` the member events the device has; an initial sync
//! (no `since`) starts the record over; `include_redundant_members` neither reads nor writes
//! it. A forgotten entry only means a member is sent again, which clients accept, so the record
//! lives in the process (another process, like another Synapse worker, sends them again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// User IDs remembered per device (Synapse's `LAZY_LOADED_MEMBERS_CACHE_MAX_SIZE`).
const PER_DEVICE: usize = 100;
/// How long a device's record lasts without use (Synapse's `..._CACHE_MAX_AGE`).
const MAX_AGE: Duration = Duration::from_secs(30 * 60);
/// Devices remembered at most; the whole record starts over when full.
const MAX_DEVICES: usize = 50_000;

/// `(user ID, device ID)`: whose record.
pub type DeviceKey = (String, String);

/// One device's record: member user ID → (event ID, when last touched).
#[derive(Default)]
struct Record {
    members: HashMap<String, (String, u64)>,
    /// A counter giving the recency order for eviction.
    clock: u64,
    used: Option<Instant>,
}

/// The per-device records. Cheap to share behind the `Syncer`.
#[derive(Default)]
pub struct LazyMembers {
    devices: Mutex<HashMap<DeviceKey, Record>>,
}

impl LazyMembers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceKey, Record>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what the device was sent (an initial sync).
    pub fn clear(&self, device: &DeviceKey) {
        self.lock().remove(device);
    }

    /// Whether the device was last sent exactly this member event for `user_id`.
    pub fn has(&self, device: &DeviceKey, user_id: &str, event_id: &str) -> bool {
        let mut devices = self.lock();
        let Some(record) = devices.get_mut(device) else {
            return false;
        };
        if record.used.is_some_and(|used| used.elapsed() > MAX_AGE) {
            devices.remove(device);
            return false;
        }
        record.clock += 1;
        let clock = record.clock;
        match record.members.get_mut(user_id) {
            Some((sent, touched)) if sent == event_id => {
                *touched = clock;
                true
            }
            _ => false,
        }
    }

    /// Records the member events sent to the device: `(user ID, event ID)`.
    pub fn record<'a>(
        &self,
        device: &DeviceKey,
        sent: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut devices = self.lock();
        if devices.len() >= MAX_DEVICES && !devices.contains_key(device) {
            devices.clear();
        }
        let record = devices.entry(device.clone()).or_default();
        if record.used.is_some_and(|used| used.elapsed() > MAX_AGE) {
            record.members.clear();
        }
        record.used = Some(Instant::now());
        for (user_id, event_id) in sent {
            record.clock += 1;
            let clock = record.clock;
            record
                .members
                .insert(user_id.to_owned(), (event_id.to_owned(), clock));
            if record.members.len() > PER_DEVICE {
                let oldest = record
                    .members
                    .iter()
                    .min_by_key(|(_, (_, touched))| *touched)
                    .map(|(user, _)| user.clone());
                if let Some(oldest) = oldest {
                    record.members.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        ("@u:x".into(), "DEV".into())
    }

    #[test]
    fn remembers_the_last_event_per_member() {
        let cache = LazyMembers::default();
        assert!(!cache.has(&key(), "@a:x", "$1"));
        cache.record(&key(), [("@a:x", "$1")]);
        assert!(cache.has(&key(), "@a:x", "$1"));
        // A newer member event of the same user is not known.
        assert!(!cache.has(&key(), "@a:x", "$2"));
        cache.record(&key(), [("@a:x", "$2")]);
        assert!(!cache.has(&key(), "@a:x", "$1"));
        assert!(!cache.has(&("@u:x".into(), "OTHER".into()), "@a:x", "$2"));
        cache.clear(&key());
        assert!(!cache.has(&key(), "@a:x", "$2"));
    }

    #[test]
    fn keeps_at_most_a_hundred_members_dropping_the_least_recent() {
        let cache = LazyMembers::default();
        let users: Vec<String> = (0..=PER_DEVICE).map(|n| format!("@{n}:x")).collect();
        cache.record(&key(), [(users[0].as_str(), "$0")]);
        for user in &users[1..PER_DEVICE] {
            cache.record(&key(), [(user.as_str(), "$e")]);
        }
        // Touch the oldest so the second oldest goes.
        assert!(cache.has(&key(), &users[0], "$0"));
        cache.record(&key(), [(users[PER_DEVICE].as_str(), "$e")]);
        assert!(cache.has(&key(), &users[0], "$0"));
        assert!(!cache.has(&key(), &users[1], "$e"));
    }
}
