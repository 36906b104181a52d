//! What the audit log says a call asked for: the request decoded from its
//! gRPC frame with the service's own descriptor, passwords, tokens and
//! bulk data left out.
//!
//! Owns that rendering only; it must never put a secret in the text. The
//! secret-bearing fields are top-level fields of their requests
//! (`password`, `admin_password`, `token`; `data` is replaced by its size).

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, Value};

/// Fields whose value never reaches the log.
const SECRET: [&str; 3] = ["password", "admin_password", "token"];
/// Bulk fields the log shows by size.
const BULK: [&str; 3] = ["data", "value", "image"];

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(nas_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The request of `service`/`method` (e.g. `nas.v1.Admin`, `AddUser`)
/// in one gRPC frame, as text.
pub fn render(service: &str, method: &str, frame: &[u8]) -> String {
    let Some(pool) = pool() else {
        return "<no descriptor>".into();
    };
    let Some(input) = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .map(|m| m.input())
    else {
        return "<unknown method>".into();
    };
    // A frame: compressed flag, 4-byte length, message.
    let Some(message) = frame.get(5..) else {
        return "<no request>".into();
    };
    if frame.first() != Some(&0) {
        return "<compressed request>".into();
    }
    let Ok(mut msg) = DynamicMessage::decode(input, message) else {
        return "<malformed request>".into();
    };
    for name in SECRET {
        if msg
            .get_field_by_name(name)
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        {
            msg.set_field_by_name(name, Value::String("<redacted>".into()));
        }
    }
    for name in BULK {
        let len = msg.get_field_by_name(name).and_then(|v| v.as_bytes().map(|b| b.len()));
        if let Some(len) = len.filter(|l| *l > 0) {
            msg.set_field_by_name(name, Value::Bytes(format!("<{len} bytes>").into()));
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn frame(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut f = vec![0];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend(body);
        f
    }

    #[test]
    fn secrets_and_bulk_never_reach_the_text() {
        let add = nas_proto::AddUserRequest {
            name: "alice".into(),
            password: "correct-horse".into(),
            uid: 1001,
            groups: vec![],
        };
        let text = render("nas.v1.Admin", "AddUser", &frame(&add));
        assert!(text.contains("alice") && text.contains("1001"), "{text}");
        assert!(!text.contains("correct-horse"), "{text}");
        let write = nas_proto::WriteLuRequest {
            lu: 1,
            offset: 4096,
            data: vec![7; 5000],
            flush: true,
        };
        let text = render("nas.v1.Admin", "WriteLu", &frame(&write));
        assert!(text.contains("5000 bytes") && text.contains("4096"), "{text}");
        let boot = nas_proto::BootstrapRequest {
            admin_user: "root".into(),
            admin_password: "hunter2hunter2".into(),
        };
        assert!(!render("nas.v1.Admin", "Bootstrap", &frame(&boot)).contains("hunter2"));
        assert_eq!(render("nas.v1.Admin", "Nope", &frame(&boot)), "<unknown method>");
        assert_eq!(
            render("nas.v1.Admin", "AddUser", &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
            "<malformed request>"
        );
    }
}
