"""What training and the evaluation both measure: mutants, test diversity, coherence, pass@k, the reward terms,
dual agreement, a run's metrics, and one model measured per problem (`scoring.measure`)."""
