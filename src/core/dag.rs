//! The adapter between our graph and `dagrs`: one dagrs node per graph node; a node starts
//! once every dependency has signalled completion on its channel, and nodes whose inputs
//! are ready run concurrently on the tokio runtime. Outcomes (failed, skipped) are not
//! dagrs errors: they travel in our own state, so one failure never aborts other branches.

use async_trait::async_trait;
use dagrs::{
    Action, Content, DefaultNode, EnvVar, Graph, InChannels, Node, NodeTable, OutChannels, Output,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The work of node `i`; runs after all its dependencies' jobs have returned.
pub type Job = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct JobAction {
    index: usize,
    job: Job,
}

#[async_trait]
impl Action for JobAction {
    async fn run(
        &self,
        inputs: &mut InChannels,
        outputs: &mut OutChannels,
        _env: Arc<EnvVar>,
    ) -> Output {
        // Wait for every dependency (a closed channel also means it is done).
        let _ = inputs.map(|_| ()).await;
        (self.job)(self.index).await;
        let _ = outputs.broadcast(Content::new(())).await;
        Output::empty()
    }
}

/// Runs `job` for nodes `0..deps.len()`, node `i` after all of `deps[i]`.
pub async fn run(deps: &[Vec<usize>], job: Job) -> Result<(), String> {
    let mut table = NodeTable::default();
    let mut graph = Graph::new();
    let mut ids = Vec::with_capacity(deps.len());
    for i in 0..deps.len() {
        let node = DefaultNode::with_action(
            format!("node-{i}"),
            JobAction {
                index: i,
                job: job.clone(),
            },
            &mut table,
        );
        ids.push(node.id());
        graph.add_node(node).map_err(|e| format!("dagrs: {e:?}"))?;
    }
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            graph
                .add_edge(ids[d], vec![ids[i]])
                .map_err(|e| format!("dagrs: {e:?}"))?;
        }
    }
    graph.set_env(EnvVar::new(table));
    graph
        .async_start()
        .await
        .map_err(|e| format!("dagrs: {e:?}"))?;
    Ok(())
}
