//! The `e2ee` scenario: real end-to-end encryption between two users, done by matrix-rust-sdk's
//! own crypto (vodozemac), over the classic `/sync` (the SDK's `sync_once`), so the only way a
//! client learns that a peer's devices or identity changed is `device_lists.changed`.
//!
//! Alice (the `--user`) and Bob (`params.bob`) are joined to the encrypted `params.room`. Bob's
//! first device sets up cross-signing; Alice syncs until she knows that device and Bob's
//! identity. Then:
//! 1. Bob logs in a second device (which uploads its keys); Alice's background sync must bring
//!    it into her store (`new_device_ms`: from the new device's login; its first sync uploads
//!    its keys meanwhile).
//! 2. Alice sends an encrypted message; Bob's second device must decrypt it.
//! 3. Bob resets his cross-signing identity (a new master key) from his first device; Alice's
//!    store must end with the new master key (`identity_reset_ms`, one per reset; five).
//!
//! Alice's store changes only after a `/keys/query`, and the SDK queries a peer only when it
//! starts tracking him or `device_lists.changed` names him, so a server that does not announce
//! the change makes the run time out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use matrix_sdk::{
    Client, Room, RoomState,
    config::SyncSettings,
    deserialized_responses::EncryptionInfo,
    encryption::CrossSigningResetAuthType,
    ruma::{
        OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId,
        api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier},
        events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
    },
};
use serde_json::{Value, json};

use crate::wait_for;

/// Identity resets in one run (each one's latency is reported).
const RESETS: usize = 5;

struct Account {
    user: OwnedUserId,
    password: String,
}

async fn login(homeserver: &str, account: &Account, device_name: &str) -> Result<Client> {
    let client = Client::builder()
        .homeserver_url(homeserver)
        .build()
        .await
        .context("building a client")?;
    client
        .matrix_auth()
        .login_username(&account.user, &account.password)
        .initial_device_display_name(device_name)
        .send()
        .await
        .with_context(|| format!("password login of {}", account.user))?;
    Ok(client)
}

/// One sync that returns at once; also sends what the SDK has queued (key uploads, queries).
async fn sync_now(client: &Client) -> Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(Duration::ZERO))
        .await
        .context("sync_once")?;
    Ok(())
}

/// Sets up (or resets) cross-signing: a new master key, uploaded with the password for UIA.
async fn reset_identity(client: &Client, account: &Account) -> Result<()> {
    let encryption = client.encryption();
    let Some(handle) = encryption
        .reset_cross_signing()
        .await
        .context("uploading cross-signing keys")?
    else {
        return Ok(());
    };
    let CrossSigningResetAuthType::Uiaa(uiaa) = handle.auth_type() else {
        bail!("the server asks for OAuth approval of the cross-signing upload");
    };
    let mut password = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(account.user.to_string())),
        account.password.clone(),
    );
    password.session = uiaa.session.clone();
    handle
        .auth(Some(AuthData::Password(password)))
        .await
        .context("uploading cross-signing keys with the password")?;
    Ok(())
}

/// The base64 master key of `user` as `client`'s store has it (no network).
async fn master_key(client: &Client, user: &UserId) -> Option<String> {
    let identity = client.encryption().get_user_identity(user).await.ok()??;
    identity.master_key().get_first_key().map(|k| k.to_base64())
}

async fn knows_device(client: &Client, user: &UserId, device: &OwnedDeviceId) -> bool {
    matches!(
        client.encryption().get_device(user, device).await,
        Ok(Some(_))
    )
}

async fn joined(client: &Client, room_id: &OwnedRoomId, timeout: Duration) -> Result<Room> {
    wait_for(
        &format!(
            "{} to see room {room_id} joined",
            client.user_id().map(|u| u.as_str()).unwrap_or("?")
        ),
        timeout,
        || async {
            sync_now(client).await.map_err(|e| json!(e.to_string()))?;
            match client.get_room(room_id) {
                Some(room) if room.state() == RoomState::Joined => Ok(room),
                other => Err(json!(format!("{:?}", other.map(|r| r.state())))),
            }
        },
    )
    .await
}

pub async fn run(
    homeserver: &str,
    alice: (&str, &str),
    params: &Value,
    timeout: Duration,
) -> Result<Value> {
    let room_id: OwnedRoomId = params["room"]
        .as_str()
        .context("params.room is missing")?
        .try_into()?;
    let alice = Account {
        user: alice.0.try_into()?,
        password: alice.1.to_owned(),
    };
    let bob = Account {
        user: params
            .pointer("/bob/user_id")
            .and_then(Value::as_str)
            .context("params.bob.user_id is missing")?
            .try_into()?,
        password: params
            .pointer("/bob/password")
            .and_then(Value::as_str)
            .context("params.bob.password is missing")?
            .to_owned(),
    };

    // Bob's first device: keys uploaded, then a cross-signing identity.
    let bob_first = login(homeserver, &bob, "bob first").await?;
    joined(&bob_first, &room_id, timeout).await?;
    reset_identity(&bob_first, &bob).await?;
    let first_master = master_key(&bob_first, &bob.user)
        .await
        .context("Bob's first device has no identity after the cross-signing upload")?;
    let bob_first_device = bob_first.device_id().context("no device")?.to_owned();

    // Alice meets Bob in the room: the SDK tracks him and queries his keys.
    let alice_client = login(homeserver, &alice, "alice").await?;
    let room = joined(&alice_client, &room_id, timeout).await?;
    if !room.latest_encryption_state().await?.is_encrypted() {
        bail!("room {room_id} is not encrypted for Alice's client");
    }
    wait_for(
        "Alice to know Bob's first device and identity",
        timeout,
        || async {
            sync_now(&alice_client)
                .await
                .map_err(|e| json!(e.to_string()))?;
            let device = knows_device(&alice_client, &bob.user, &bob_first_device).await;
            match master_key(&alice_client, &bob.user).await {
                Some(key) if device && key == first_master => Ok(()),
                key => Err(json!({"device": device, "master_key": key})),
            }
        },
    )
    .await?;

    // From here Alice syncs as a client does, long-polling; the rest only reads her store.
    let background = alice_client.clone();
    let alice_sync = tokio::spawn(async move {
        loop {
            let settings = SyncSettings::default().timeout(Duration::from_secs(10));
            if let Err(err) = background.sync_once(settings).await {
                eprintln!("Alice's sync failed: {err:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let result = scenario(
        &alice_client,
        &room,
        &bob,
        &bob_first,
        homeserver,
        timeout,
        first_master,
    )
    .await;
    alice_sync.abort();
    result
}

async fn scenario(
    alice: &Client,
    room: &Room,
    bob: &Account,
    bob_first: &Client,
    homeserver: &str,
    timeout: Duration,
    first_master: String,
) -> Result<Value> {
    // 1. Bob's second device, with its keys uploaded (sync_once sends the upload).
    let bob_second = login(homeserver, bob, "bob second").await?;
    let second_device = bob_second.device_id().context("no device")?.to_owned();
    let decrypted = Arc::new(std::sync::Mutex::new(None::<Value>));
    let seen = decrypted.clone();
    bob_second.add_event_handler(
        move |ev: OriginalSyncRoomMessageEvent, info: Option<EncryptionInfo>| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                *seen = Some(json!({
                    "event_id": ev.event_id,
                    "body": ev.content.body(),
                    "encrypted": info.is_some(),
                    "megolm_session": info.as_ref().and_then(|i| i.session_id().map(str::to_owned)),
                }));
            }
        },
    );
    // Measured from the login: the new device's first sync uploads its keys meanwhile.
    let logged_in = Instant::now();
    let room_id = room.room_id().to_owned();
    let alice_learns = wait_for(
        "Alice's sync to bring Bob's second device",
        timeout,
        || async {
            if knows_device(alice, &bob.user, &second_device).await {
                Ok(logged_in.elapsed())
            } else {
                Err(
                    json!({"known": alice.encryption().get_user_devices(&bob.user).await
                .map(|d| d.keys().map(|k| k.to_string()).collect::<Vec<_>>()).ok()}),
                )
            }
        },
    );
    let (_, new_device) = tokio::try_join!(joined(&bob_second, &room_id, timeout), alice_learns)?;
    let new_device_ms = new_device.as_millis();

    // 2. An encrypted message from Alice, decrypted by the new device.
    let body = "encrypted for Bob's new device";
    let sent = room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .context("Alice's encrypted send")?;
    let done = AtomicBool::new(false);
    let message = wait_for(
        "Bob's second device to decrypt Alice's message",
        timeout,
        || async {
            if !done.load(Ordering::Relaxed) {
                let settings = SyncSettings::default().timeout(Duration::from_millis(500));
                bob_second
                    .sync_once(settings)
                    .await
                    .map_err(|e| json!(e.to_string()))?;
            }
            let seen = decrypted.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match seen {
                Some(m) if m["event_id"] == json!(sent.response.event_id) => {
                    done.store(true, Ordering::Relaxed);
                    Ok(m)
                }
                other => Err(json!({"last_message": other})),
            }
        },
    )
    .await?;

    // 3. Bob resets his identity from his first device, RESETS times; each time Alice must
    //    end with the new master key.
    let mut master = first_master.clone();
    let mut identity_reset_ms = Vec::new();
    for _ in 0..RESETS {
        reset_identity(bob_first, bob).await?;
        let new_master = master_key(bob_first, &bob.user)
            .await
            .context("Bob has no identity after the reset")?;
        if new_master == master {
            bail!("the reset kept Bob's master key");
        }
        let reset_at = Instant::now();
        wait_for(
            "Alice's sync to bring Bob's new master key",
            timeout,
            || async {
                match master_key(alice, &bob.user).await {
                    Some(key) if key == new_master => Ok(()),
                    key => Err(json!({"alice_has": key, "new": new_master})),
                }
            },
        )
        .await?;
        identity_reset_ms.push(reset_at.elapsed().as_millis());
        master = new_master;
    }
    let new_master = master;

    Ok(json!({
        "sent_encrypted": sent.encryption_info.is_some(),
        "new_device": second_device,
        "new_device_ms": new_device_ms,
        "message": message,
        "first_master_key": first_master,
        "new_master_key": new_master,
        "identity_reset_ms": identity_reset_ms,
    }))
}
