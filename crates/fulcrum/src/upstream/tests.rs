use super::*;

fn pool(text: &str) -> Pool {
    fulcrum_core::config::load(text).map(|l| l.model.pools[0].clone()).unwrap()
}

/// Regression: each pool runtime had its own clock, so an ejection
/// handed to the next generation at a reload was measured against a
/// clock restarted at zero, and lasted as long again as the old pool's age.
#[test]
fn an_ejection_keeps_its_end_across_generations() {
    let text = "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"tcp\"\npool = \"p\"\n\
                [[pool]]\nname = \"p\"\n[pool.passive]\nconsecutive_failures = 1\nejection = \"10s\"\nmax_ejected_percent = 100\n\
                [[pool.backend]]\nname = \"b\"\naddress = \"127.0.0.1:9\"\n";
    let old = PoolRuntime::new(&pool(text), 1, None);
    std::thread::sleep(Duration::from_millis(50)); // the old pool is older than the new one
    old.session_failed(BackendId(0), "refused");
    let until = old.backend(BackendId(0)).lock_health().ejected_until().unwrap();
    old.backend(BackendId(0)).stats.requests.fetch_add(7, Ordering::Relaxed);
    let new = PoolRuntime::new(&pool(text), 2, None);
    new.backend(BackendId(0)).inherit(old.backend(BackendId(0)));
    let b = new.backend(BackendId(0));
    assert_eq!(b.lock_health().ejected_until(), Some(until));
    // What is left of the ejection, read on the new pool's clock, is no
    // more than it was: it ends when it would have ended.
    assert!(
        until.saturating_sub(new.now()) <= Duration::from_secs(10),
        "the ejection grew across generations"
    );
    assert!(!new.eligible(BackendId(0)), "still ejected");
    assert_eq!(b.stats.requests.load(Ordering::Relaxed), 7, "counters carry over");
}

/// Idle pools with workers: what a release evicts, what a checkout skips.
mod idle {
    use super::*;

    fn pool_of(max_idle: usize) -> PoolRuntime {
        let text = format!(
            "[[service]]\nname = \"s\"\nlisten = [\"127.0.0.1:0\"]\nmode = \"http\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\nmax_idle_per_backend = {max_idle}\n\
             [[pool.backend]]\nname = \"b\"\naddress = \"127.0.0.1:9\"\n"
        );
        let model = fulcrum_core::config::load(&text).map(|l| l.model.pools[0].clone()).unwrap();
        PoolRuntime::new(&model, 1, None)
    }

    /// A connected pair: the pooled end and the far end, which sees EOF
    /// once the pool closes its end.
    async fn pair(listener: &tokio::net::TcpListener) -> (Upstream, TcpStream) {
        let (ours, theirs) =
            tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let up =
            Upstream { backend: BackendId(0), stream: ours.unwrap(), reused: false, snat: None, local: None };
        (up, theirs.unwrap().0)
    }

    async fn closed(far: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_secs(5), far.read(&mut byte)).await, Ok(Ok(0)))
    }

    /// Idle connections of another worker, pushed as that worker's release would.
    fn idle_of(pool: &PoolRuntime, worker: usize, up: Upstream) {
        let mut idle = pool.backend(BackendId(0)).idle.lock().unwrap();
        idle.push(Idle { up, since: Instant::now(), worker });
    }

    fn workers(pool: &PoolRuntime) -> Vec<usize> {
        pool.backend(BackendId(0)).idle.lock().unwrap().iter().map(|c| c.worker).collect()
    }

    #[tokio::test]
    async fn a_full_pool_drops_the_releasing_workers_oldest_not_another_workers_last() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool_of(2);
        let here = crate::workers::current();
        let (theirs, mut theirs_far) = pair(&listener).await;
        idle_of(&pool, 7, theirs);
        let (first, mut first_far) = pair(&listener).await;
        pool.release(first, Duration::from_secs(60));
        let (second, _second_far) = pair(&listener).await;
        pool.release(second, Duration::from_secs(60));
        assert_eq!(workers(&pool), vec![7, here], "worker 7 keeps its only idle connection");
        assert!(closed(&mut first_far).await, "this worker's oldest was closed");
        // With none of its own idle, a worker's release takes the oldest of all.
        let other = pool_of(1);
        let (theirs2, mut theirs2_far) = pair(&listener).await;
        idle_of(&other, 7, theirs2);
        let (mine, _mine_far) = pair(&listener).await;
        other.release(mine, Duration::from_secs(60));
        assert_eq!(workers(&other), vec![here]);
        assert!(closed(&mut theirs2_far).await);
        drop(pool);
        assert!(closed(&mut theirs_far).await);
    }

    #[tokio::test]
    async fn checkout_skips_closed_connections_and_other_workers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool_of(8);
        let here = crate::workers::current();
        let (alive, mut alive_far) = pair(&listener).await;
        idle_of(&pool, here, alive);
        let (theirs, _theirs_far) = pair(&listener).await;
        idle_of(&pool, 7, theirs);
        let mut theirs_fars = Vec::new();
        for _ in 0..3 {
            // Closed by the backend while idle (pooled once its EOF is seen).
            let (dead, far) = pair(&listener).await;
            drop(far);
            dead.stream.readable().await.unwrap();
            idle_of(&pool, here, dead);
            let (theirs, far) = pair(&listener).await;
            idle_of(&pool, 7, theirs);
            theirs_fars.push(far);
        }
        let got = pool.checkout(BackendId(0), Duration::from_secs(60)).expect("the live connection");
        assert!(got.reused);
        assert_eq!(workers(&pool), vec![7, 7, 7, 7], "the closed ones are gone, worker 7's stay");
        // It is the live one: bytes reach its far end.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = got.stream;
        stream.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        alive_far.read_exact(&mut byte).await.unwrap();
        assert!(pool.checkout(BackendId(0), Duration::from_secs(60)).is_none(), "none left for this worker");
    }

    #[tokio::test]
    async fn a_connection_whose_source_a_session_awaits_is_closed_not_pooled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = pool_of(8);
        let snat = Arc::new(SnatRuntime::new(&fulcrum_core::model::SnatPool {
            name: "one".into(),
            first_ip: std::net::Ipv4Addr::new(127, 0, 0, 12),
            last_ip: std::net::Ipv4Addr::new(127, 0, 0, 12),
            netmask: std::net::Ipv4Addr::new(255, 255, 255, 255),
            ports: (40000, 40000),
            block_size: 1,
            initial_blocks: 1,
            max_blocks: 1,
            wait: Duration::from_secs(30),
        }));
        let (mut up, mut far) = pair(&listener).await;
        up.snat = Some(snat.try_lease().expect("the only source"));
        let waiter = tokio::spawn({
            let snat = snat.clone();
            async move { snat.lease(Duration::from_secs(30), || false).await.is_some() }
        });
        while !snat.has_waiters() {
            tokio::task::yield_now().await;
        }
        pool.release(up, Duration::from_secs(60));
        assert!(workers(&pool).is_empty(), "not pooled while a session waits for its source");
        assert!(closed(&mut far).await, "closed");
        assert!(waiter.await.unwrap(), "the waiting session got the source");
    }
}
