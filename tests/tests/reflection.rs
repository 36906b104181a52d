//! gRPC reflection: a client with no `.proto` files (as grpcurl) finds
//! every service a CHN serves and the descriptors of their methods.

use nas_tests::TestCluster;
use prost::Message;
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

/// Sends one reflection request on `channel` and returns its answer.
async fn ask(channel: &tonic::transport::Channel, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
    let channel = channel.clone();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection call")
        .into_inner();
    Ok(replies
        .message()
        .await?
        .and_then(|r| r.message_response)
        .expect("an answer"))
}

#[tokio::test]
async fn reflection_lists_every_service_and_describes_its_methods() {
    let c = TestCluster::up(1, &[]).expect("cluster up");
    let addr = c.channel("CHN1");

    let MessageResponse::ListServicesResponse(list) = ask(&addr, MessageRequest::ListServices(String::new()))
        .await
        .expect("ListServices")
    else {
        panic!("ListServices answered with something else")
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["nas.v1.Nas", "nas.v1.Admin", "nas.v1.Raft", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} is not listed: {names:?}");
    }

    let answer = ask(&addr, MessageRequest::FileContainingSymbol("nas.v1.Admin".into()))
        .await
        .expect("FileContainingSymbol");
    let MessageResponse::FileDescriptorResponse(files) = answer else {
        panic!("FileContainingSymbol answered with something else")
    };
    let admin = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("a file descriptor"))
        .flat_map(|f| f.service)
        .find(|s| s.name() == "Admin")
        .expect("the Admin service's descriptor");
    let methods: Vec<&str> = admin.method.iter().map(|m| m.name()).collect();
    assert!(methods.contains(&"ListExports"), "{methods:?}");
    assert!(methods.contains(&"CreateExport"), "{methods:?}");

    let unknown = ask(&addr, MessageRequest::FileContainingSymbol("nas.v1.NoSuchThing".into())).await;
    assert!(
        matches!(&unknown, Err(s) if s.code() == tonic::Code::NotFound),
        "an unknown symbol must answer NOT_FOUND: {unknown:?}"
    );
}
