//! A real Kafka-protocol broker for the Event Hubs tests and bench: tansu (a Kafka-compatible
//! broker in Rust) on 127.0.0.1, in memory, killed on drop; topics made and filled with
//! librdkafka's admin client and producer.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tansu broker (a Kafka-compatible broker in Rust) on 127.0.0.1, in memory; killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(super::tools::require(&super::tools::TANSU))
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        wait_for_port(port, "tansu");
        Self { child, port }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for r in results {
            r.unwrap();
        }
    }

    /// Produces `messages` to `topic`, message i to partition i % partitions; waits for acks.
    pub fn produce(&self, topic: &str, partitions: i32, messages: &[String]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            // One message per record batch: tansu 0.6.0 answers a fetch from an offset inside
            // a batch with the next batch, so a consumer resuming mid-batch would skip the
            // rest of that batch (seen: 108 messages lost after a restart, exactly one batch).
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        for (i, body) in messages.iter().enumerate() {
            let partition = i32::try_from(i).unwrap() % partitions;
            let key = i.to_string();
            loop {
                let record = BaseRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(body);
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, _)) => {
                        assert!(format!("{e}").contains("Queue full"), "produce failed: {e}");
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
