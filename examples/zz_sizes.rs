use tower_defer::job::*;
fn main() {
    println!("Job {}", std::mem::size_of::<Job>());
    println!("StoredRequest {}", std::mem::size_of::<StoredRequest>());
    println!("JobOptions {}", std::mem::size_of::<JobOptions>());
    println!("HeaderMap {}", std::mem::size_of::<http::HeaderMap>());
    println!("Method {}", std::mem::size_of::<http::Method>());
    println!(
        "PathAndQuery {}",
        std::mem::size_of::<http::uri::PathAndQuery>()
    );
    println!(
        "Option<JobError> {}",
        std::mem::size_of::<Option<JobError>>()
    );
    println!("Option<Lease> {}", std::mem::size_of::<Option<Lease>>());
    println!(
        "Option<WebhookTarget> {}",
        std::mem::size_of::<Option<WebhookTarget>>()
    );
    println!("RetryPolicy {}", std::mem::size_of::<RetryPolicy>());
}
